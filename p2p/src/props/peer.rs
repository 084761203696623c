//! The peer protocol's requests and answers: the `Range` header a chunk server parses
//! (`crate::source::ByteRange`, `crate::peer::server::parse_range`) and the error bodies a
//! node reads from peers.

use proptest::prelude::*;

use super::{alloc, mutate};
use crate::peer::error_text;
use crate::peer::parse_range;
use crate::source::ByteRange;

fn range() -> impl Strategy<Value = ByteRange> {
    let pos = prop_oneof![0u64..1000, any::<u64>()];
    prop_oneof![
        (pos.clone(), pos.clone()).prop_map(|(a, b)| ByteRange::FromTo {
            first: a.min(b),
            last: a.max(b)
        }),
        pos.clone().prop_map(|first| ByteRange::From { first }),
        pos.prop_map(|len| ByteRange::Suffix { len }),
    ]
}

/// The header value a client sends for `r`, in one of the spellings the parser accepts.
fn header(r: ByteRange, unit: &str, blank: &str) -> String {
    match r {
        ByteRange::FromTo { first, last } => format!("{unit}={first}{blank}-{blank}{last}"),
        ByteRange::From { first } => format!("{unit}={first}-"),
        ByteRange::Suffix { len } => format!("{unit}=-{blank}{len}"),
    }
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn ranges_round_trip(
        r in range(),
        unit in prop_oneof![Just("bytes"), Just("BYTES"), Just("Bytes")],
        blank in prop_oneof![Just(""), Just(" ")],
    ) {
        let value = header(r, unit, blank);
        prop_assert_eq!(ByteRange::parse(&value), Ok(r));
        match r {
            ByteRange::FromTo { first, last } if last < u64::MAX => {
                prop_assert_eq!(parse_range(&value), Ok(first..last + 1));
            }
            _ => prop_assert!(parse_range(&value).is_err()),
        }
    }

    #[test]
    fn hostile_ranges(
        bytes in mutate::hostile(
            (range(), Just("bytes"), Just("")).prop_map(|(r, u, b)| header(r, u, b).into_bytes())
        ),
        size in prop_oneof![0u64..100, any::<u64>()],
    ) {
        let value = String::from_utf8_lossy(&bytes);
        let parsed = alloc::bounded("Range", value.len(), 2, 1 << 10, || ByteRange::parse(&value));
        match parsed {
            Ok(r) => {
                if let Some(got) = r.resolve(size) {
                    prop_assert!(got.start < got.end && got.end <= size);
                }
            }
            Err(e) => prop_assert!(e.value.chars().count() <= 64),
        }
        if let Ok(r) = parse_range(&value) {
            prop_assert!(r.start < r.end);
        }
    }

    #[test]
    fn hostile_error_bodies(bytes in mutate::hostile(
        "[ -~]{0,60}".prop_map(|error| format!("{{\"error\":{error:?}}}").into_bytes())
    )) {
        let text = alloc::bounded("error body", bytes.len(), 8, 1 << 10, || error_text(&bytes));
        prop_assert!(text.len() <= bytes.len() * 3 + 600);
    }
}
