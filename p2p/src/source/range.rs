//! [`ByteRange`]: one byte range as a client asks for it in an HTTP `Range` header
//! (RFC 9110 14.1.2), and what it is of a blob of known size. Network input: every header
//! value either parses or is refused with a reason, never a panic.

use std::ops::Range;

/// One range of a `Range: bytes=…` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last` (both inclusive, `first <= last`).
    FromTo { first: u64, last: u64 },
    /// `bytes=first-`: from `first` to the end.
    From { first: u64 },
    /// `bytes=-len`: the last `len` bytes.
    Suffix { len: u64 },
}

/// Why a `Range` header value is not one byte range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Range {value:?}: {reason}")]
pub struct BadRange {
    /// The header value (cut to 64 characters).
    pub value: String,
    pub reason: &'static str,
}

impl ByteRange {
    /// Parses a header value holding exactly one range of bytes: `bytes=a-b`, `bytes=a-`,
    /// `bytes=-n` (the unit case-insensitive, blanks around the numbers tolerated). Several
    /// ranges, other units, `first > last`, signs and numbers past `u64` are refused.
    pub fn parse(value: &str) -> Result<Self, BadRange> {
        let bad = |reason| BadRange {
            value: value.chars().take(64).collect(),
            reason,
        };
        let value = value.trim();
        let (unit, spec) = value.split_once('=').ok_or_else(|| bad("no unit"))?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Err(bad("not in bytes"));
        }
        if spec.contains(',') {
            return Err(bad("several ranges"));
        }
        let (first, last) = spec.split_once('-').ok_or_else(|| bad("not first-last"))?;
        let number = |s: &str| -> Result<Option<u64>, BadRange> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("not a byte position"));
            }
            s.parse().map(Some).map_err(|_| bad("position too large"))
        };
        match (number(first)?, number(last)?) {
            (Some(first), Some(last)) if first <= last => Ok(Self::FromTo { first, last }),
            (Some(_), Some(_)) => Err(bad("ends before it starts")),
            (Some(first), None) => Ok(Self::From { first }),
            (None, Some(len)) => Ok(Self::Suffix { len }),
            (None, None) => Err(bad("no position")),
        }
    }

    /// The bytes this range names of a representation of `size` bytes (a last position
    /// past the end is cut to the end, a suffix longer than `size` is all of it); `None` when
    /// unsatisfiable (it starts at or past the end, the suffix is empty, or `size` is 0).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        let range = match self {
            Self::FromTo { first, last } => first..last.saturating_add(1).min(size),
            Self::From { first } => first..size,
            Self::Suffix { len } => size.saturating_sub(len)..size,
        };
        (range.start < range.end).then_some(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let p = |v| ByteRange::parse(v);
        assert_eq!(p("bytes=0-0"), Ok(ByteRange::FromTo { first: 0, last: 0 }));
        assert_eq!(
            p("bytes=10-19"),
            Ok(ByteRange::FromTo {
                first: 10,
                last: 19
            })
        );
        assert_eq!(
            p(" Bytes=5 - 6 "),
            Ok(ByteRange::FromTo { first: 5, last: 6 })
        );
        assert_eq!(p("bytes=7-"), Ok(ByteRange::From { first: 7 }));
        assert_eq!(p("bytes=-3"), Ok(ByteRange::Suffix { len: 3 }));
        assert_eq!(p("bytes=-0"), Ok(ByteRange::Suffix { len: 0 }));
        let max = u64::MAX;
        assert_eq!(
            p("bytes=0-18446744073709551615"),
            Ok(ByteRange::FromTo {
                first: 0,
                last: max
            })
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5",
            "bytes=5-2",
            "bytes=0-1,3-4",
            "bytes=0-1, 3-",
            "items=0-1",
            "=0-1",
            "bytes=+1-2",
            "bytes=1--2",
            "bytes=0x10-",
            "bytes=1.5-2",
            "bytes=0-99999999999999999999999",
            "bytes=18446744073709551616-",
            "bytes=-99999999999999999999999",
            "bytes=\u{0660}-1",
            "bytes=１-2",
        ] {
            assert!(ByteRange::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("bytes={}", "9".repeat(10_000));
        let e = ByteRange::parse(&long).unwrap_err();
        assert!(e.value.len() <= 64, "{e}");
    }

    #[test]
    fn resolves_against_the_size() {
        let r = |v, size| ByteRange::parse(v).unwrap().resolve(size);
        assert_eq!(r("bytes=0-0", 10), Some(0..1));
        assert_eq!(r("bytes=2-5", 10), Some(2..6));
        assert_eq!(r("bytes=2-100", 10), Some(2..10));
        assert_eq!(r("bytes=0-18446744073709551615", 10), Some(0..10));
        assert_eq!(r("bytes=9-", 10), Some(9..10));
        assert_eq!(r("bytes=0-", 10), Some(0..10));
        assert_eq!(r("bytes=10-", 10), None);
        assert_eq!(r("bytes=10-12", 10), None);
        assert_eq!(r("bytes=18446744073709551615-", 10), None);
        assert_eq!(r("bytes=-3", 10), Some(7..10));
        assert_eq!(r("bytes=-30", 10), Some(0..10));
        assert_eq!(r("bytes=-18446744073709551615", 10), Some(0..10));
        assert_eq!(r("bytes=-0", 10), None);
        assert_eq!(r("bytes=0-", 0), None);
        assert_eq!(r("bytes=-1", 0), None);
    }
}
