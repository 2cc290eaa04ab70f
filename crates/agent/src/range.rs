//! Single `Range: bytes=...` requests, as clients resume interrupted layer downloads.

/// What to send for a request against an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeOutcome {
    /// No usable range: the whole object, 200.
    Full,
    /// `start..=end`, 206.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Parses one `bytes=` range. Malformed or multi-range headers are ignored (RFC 9110 lets a
/// server serve the whole representation instead), never an error.
pub(crate) fn parse(header: Option<&str>, size: u64) -> RangeOutcome {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeOutcome::Full;
    };
    if spec.contains(',') || spec.len() > 64 {
        return RangeOutcome::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(n) if size > 0 => RangeOutcome::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            Some(_) => RangeOutcome::Unsatisfiable,
            None => RangeOutcome::Full,
        },
        (start, end) => {
            let Some(start) = num(start) else {
                return RangeOutcome::Full;
            };
            let end = match end {
                "" => u64::MAX,
                e => match num(e) {
                    Some(e) if e >= start => e,
                    _ => return RangeOutcome::Full,
                },
            };
            if start >= size {
                RangeOutcome::Unsatisfiable
            } else {
                RangeOutcome::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeOutcome::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10), Full);
        assert_eq!(parse(Some("bytes=0-4"), 10), Partial { start: 0, end: 4 });
        assert_eq!(parse(Some("bytes=5-"), 10), Partial { start: 5, end: 9 });
        assert_eq!(parse(Some("bytes=5-100"), 10), Partial { start: 5, end: 9 });
        assert_eq!(parse(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(parse(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse(Some("bytes=99999999999999999999999-"), 10), Full);
        assert_eq!(parse(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse(Some("items=0-1"), 10), Full);
        assert_eq!(parse(Some("bytes=a-b"), 10), Full);
        assert_eq!(parse(Some("bytes=-"), 10), Full);
    }
}
