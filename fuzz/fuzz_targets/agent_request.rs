//! The mirror's request parser: a client's method and request target (path and query, with
//! containerd's `ns`), as hyper hands them over.
#![no_main]

use http::{Method, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use pollen_agent::fuzzing::{parse_request, Request};
use pollen_oci::Name;

fuzz_target!(|data: &[u8]| {
    let Some((&m, target)) = data.split_first() else {
        return;
    };
    let method = match m % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::PUT,
        _ => Method::from_bytes(target.get(..3).unwrap_or(b"X")).unwrap_or(Method::POST),
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    match parse_request(&method, &uri) {
        Ok((api, ns, head)) => {
            assert!(method == Method::GET || method == Method::HEAD);
            assert_eq!(head, method == Method::HEAD);
            if let Some(ns) = ns {
                assert!(uri.query().is_some_and(|q| q.contains("ns=")), "{ns}");
            }
            match api {
                Request::Ping => {}
                Request::Manifest { name, .. } | Request::Blob { name, .. } => {
                    assert!(Name::parse(name.as_str()).is_ok());
                    assert!(!name.as_str().contains(".."));
                }
            }
        }
        Err(status) => assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::NOT_FOUND,
                StatusCode::METHOD_NOT_ALLOWED
            ]
            .contains(&status),
            "{status}"
        ),
    }
});
