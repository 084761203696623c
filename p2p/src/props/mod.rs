//! Property tests of every parser of network bytes in this crate (DESIGN "Security and bad
//! input"): random and mutated inputs ([`mutate`]) never panic, allocate at most a bound
//! proportional to the input or a fixed cap ([`alloc`]), and are refused with an error;
//! where a codec exists, encoding then decoding is the identity. Cases per property:
//! [`mutate::cases`] (4096; `PROPTEST_CASES` overrides). The registry client's are in
//! `crate::registry::props` (they need its private parsers).

#[path = "../../../testing/alloc.rs"]
pub(crate) mod alloc;
#[path = "../../../testing/mutate.rs"]
pub(crate) mod mutate;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

mod chunk;
mod peer;
mod preheat;
mod reference;
mod tracker;

use proptest::prelude::*;

use crate::Digest;

/// Any digest.
pub(crate) fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_raw)
}

/// A short string of any characters (control characters and non-ASCII included).
pub(crate) fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect()),
        proptest::collection::vec(0x20u8..0x7f, 0..max)
            .prop_map(|b| String::from_utf8(b).expect("ASCII")),
    ]
}
