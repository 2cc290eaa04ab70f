//! `Range` header parsing for blob requests (resumable and parallel
//! downloads depend on it).

use http::HeaderValue;

/// A parsed `Range` header, with end exclusive and clamped to the blob.
#[derive(Debug, PartialEq)]
pub(crate) enum RangeSpec {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range.
///
/// Anything this server does not understand (other units, multiple ranges,
/// malformed specs) is ignored and the whole blob is served, which RFC 9110
/// permits and which is what clients must cope with from real registries.
pub(crate) fn parse_range(header: Option<&HeaderValue>, len: u64) -> RangeSpec {
    let Some(spec) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .filter(|s| !s.contains(','))
    else {
        return RangeSpec::Full;
    };
    let Some((first, last)) = spec.split_once('-').map(|(a, b)| (a.trim(), b.trim())) else {
        return RangeSpec::Full;
    };
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        return match last.parse::<u64>() {
            Ok(0) => RangeSpec::Unsatisfiable,
            Ok(_) if len == 0 => RangeSpec::Unsatisfiable,
            Ok(n) => RangeSpec::Partial(len - n.min(len), len),
            Err(_) => RangeSpec::Full,
        };
    }
    let Ok(start) = first.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = match last {
        "" => len,
        l => match l.parse::<u64>() {
            Ok(e) if e >= start => e.saturating_add(1).min(len),
            _ => return RangeSpec::Full,
        },
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial(start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> RangeSpec {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeSpec::Full);
        assert_eq!(range("bytes=2-4", 10), RangeSpec::Partial(2, 5));
        assert_eq!(range("bytes=2-", 10), RangeSpec::Partial(2, 10));
        assert_eq!(range("bytes=2-100", 10), RangeSpec::Partial(2, 10));
        assert_eq!(range("bytes=-3", 10), RangeSpec::Partial(7, 10));
        assert_eq!(range("bytes=-30", 10), RangeSpec::Partial(0, 10));
        assert_eq!(range("bytes=10-", 10), RangeSpec::Unsatisfiable);
        assert_eq!(range("bytes=0-0", 0), RangeSpec::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), RangeSpec::Unsatisfiable);
        assert_eq!(range("bytes=4-2", 10), RangeSpec::Full);
        assert_eq!(range("bytes=0-1,4-5", 10), RangeSpec::Full);
        assert_eq!(range("items=0-1", 10), RangeSpec::Full);
        assert_eq!(range("bytes=x-1", 10), RangeSpec::Full);
    }
}
