//! Human units on the command line: rates in bits or bytes per second, sizes, durations.

use bytesize::ByteSize;

/// A rate in bits (`200Mbit/s`, `10Gbit`) or bytes (`300MB/s`, `1GiB`) per second, as bytes
/// per second.
pub fn rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let bad = || format!("{s:?}: expected a rate like 10Gbit/s or 300MB/s");
    let bytes = if let Some(n) = t.strip_suffix("bit") {
        let (num, scale) = match n.char_indices().last() {
            Some((at, 'k' | 'K')) => (n.get(..at).unwrap_or(""), 1e3),
            Some((at, 'M')) => (n.get(..at).unwrap_or(""), 1e6),
            Some((at, 'G')) => (n.get(..at).unwrap_or(""), 1e9),
            Some((at, 'T')) => (n.get(..at).unwrap_or(""), 1e12),
            _ => (n, 1.0),
        };
        num.trim().parse::<f64>().map_err(|_| bad())? * scale / 8.0
    } else {
        t.parse::<ByteSize>().map_err(|_| bad())?.as_u64() as f64
    };
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{s:?}: a rate must be at least 1 byte per second"));
    }
    Ok(bytes)
}

/// A size: `3GB`, `1.5GiB`, `512MiB`.
pub fn size(s: &str) -> Result<u64, String> {
    let n = s
        .trim()
        .parse::<ByteSize>()
        .map_err(|e| format!("{s:?}: expected a size like 3GB or 512MiB: {e}"))?
        .as_u64();
    if n == 0 {
        return Err(format!("{s:?}: the size must be above zero"));
    }
    Ok(n)
}

/// A duration: `10s`, `250ms`, `0s`.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?}: expected a duration like 10s or 250ms: {e}"))
}

/// A fraction from 0 to 1.
pub fn fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?}: expected a fraction from 0 to 1")),
    }
}

/// A piece size the agent accepts (`--piece-size`: 64KiB to 64MiB; `Scenario::check` checks
/// that each layer fits in `MAX_PIECES` of them).
pub fn piece_size(s: &str) -> Result<u32, String> {
    let n = size(s)?;
    let p = u32::try_from(n).map_err(|_| format!("{s:?}: at most 64MiB"))?;
    pollen_proto::PieceGeometry::new(n, p)
        .map(|_| p)
        .map_err(|e| format!("{s:?}: not a piece size the agent takes: {e}"))
}

/// A size, or `0` (off).
pub fn size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    size(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_bits_and_bytes() {
        assert_eq!(rate("10Gbit/s").unwrap(), 1.25e9);
        assert_eq!(rate("200Mbit").unwrap(), 25e6);
        assert_eq!(rate("300MB/s").unwrap(), 300e6);
        assert_eq!(rate("1GiB").unwrap(), (1u64 << 30) as f64);
        assert!(rate("fast").is_err());
        assert!(rate("0bit").is_err());
    }

    #[test]
    fn sizes_and_fractions() {
        assert_eq!(size("3GB").unwrap(), 3_000_000_000);
        assert!(size("0").is_err());
        assert_eq!(fraction("0.1").unwrap(), 0.1);
        assert!(fraction("2").is_err());
    }
}
