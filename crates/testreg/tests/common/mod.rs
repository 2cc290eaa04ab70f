//! A deliberately plain HTTP/1.1 client (hyper's low-level connection API)
//! so the registry is tested over real sockets without any client-side
//! retries, pooling or decompression hiding what the server sent.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;
use pollen_testreg::TestRegistry;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

/// A fully read response. `complete` is false when the body stream ended
/// with an error (e.g. the server closed the connection early).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn content_length(&self) -> u64 {
        self.header("content-length")
            .parse()
            .expect("content-length")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The `code` of the first OCI error in the body.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// One client connection, reusable for keep-alive requests.
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(reg: &TestRegistry) -> Conn {
        let stream = TcpStream::connect(reg.addr()).await.expect("connect");
        let (sender, conn) = handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            sender,
            host: reg.host(),
        }
    }

    /// Sends a request and returns as soon as the response head arrives.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response<Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.sender.ready().await.expect("connection ready");
        let req = req.body(Empty::new()).expect("request");
        self.sender.send_request(req).await.expect("response head")
    }

    pub async fn fetch(&mut self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let resp = self.send(method, path, headers).await;
        read_reply(resp).await
    }
}

/// Reads a response body to the end or to the first error.
pub async fn read_reply(resp: Response<Incoming>) -> Reply {
    let (parts, mut body) = resp.into_parts();
    let mut buf = BytesMut::new();
    let complete = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    };
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: buf.freeze(),
        complete,
    }
}

/// One request on a fresh connection.
pub async fn fetch(
    reg: &TestRegistry,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    Conn::open(reg).await.fetch(method, path, headers).await
}

pub async fn get(reg: &TestRegistry, path: &str) -> Reply {
    fetch(reg, Method::GET, path, &[]).await
}

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic, non-repeating-looking test data.
pub fn data(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Parses a `WWW-Authenticate` challenge into its scheme and parameters.
pub fn parse_challenge(value: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = value.split_once(' ').expect("scheme");
    let params = rest
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    (scheme.to_owned(), params)
}
