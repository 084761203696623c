//! Hostile inputs for the property tests of the parsers of network bytes (DESIGN "Security
//! and bad input"): valid encodings with bytes flipped, inserted, deleted, duplicated, or cut
//! off. The one mutation helper of the workspace, included with `#[path]` by the property
//! tests of `shoal-p2p`, `shoal-plugin` and `shoal-registry-ext`.
#![allow(dead_code)] // each test binary uses part of it

use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per property: many thousands in all, yet the whole set runs in seconds on 2 cores.
/// `PROPTEST_CASES` overrides it (a longer hunt by hand).
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096)
}

/// The config of every property: [`cases`], no failure persistence files in the tree (a
/// failure prints its minimal input, which becomes a regular unit test).
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Byte strings a parser treats specially: JSON punctuation, numbers at the edges of the
/// integer types, keywords.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"-",
    b"=",
    b"\\",
    b"\0",
    b"\n",
    b" ",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"4294967295",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"1e999",
    b"\"all\"",
    b"sha256:",
    b"\xff",
    b"\xc3",
    b"\\u0000",
    b"\\ud800",
];

/// One edit of a byte string.
#[derive(Clone, Debug)]
pub enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Token(Index, Index),
    /// Copies a slice of the input to another place (repeated fields, nested structures).
    Duplicate(Index, Index, Index),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<Index>().prop_map(Edit::Delete),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Edit::Duplicate(a, b, c)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

impl Edit {
    pub fn apply(&self, b: &mut Vec<u8>) {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match self {
            Edit::Flip(i, bit) if !b.is_empty() => {
                let i = at(i, b.len());
                b[i] ^= 1 << bit;
            }
            Edit::Set(i, v) if !b.is_empty() => {
                let i = at(i, b.len());
                b[i] = *v;
            }
            Edit::Insert(i, v) => {
                let i = at(i, b.len() + 1);
                b.insert(i, *v);
            }
            Edit::Delete(i) if !b.is_empty() => {
                let i = at(i, b.len());
                b.remove(i);
            }
            Edit::Token(i, t) => {
                let i = at(i, b.len() + 1);
                let t = TOKENS[t.index(TOKENS.len())];
                b.splice(i..i, t.iter().copied());
            }
            Edit::Duplicate(from, len, to) if !b.is_empty() => {
                let from = at(from, b.len());
                let len = at(len, (b.len() - from).min(256)) + 1;
                let piece = b[from..from + len].to_vec();
                let to = at(to, b.len() + 1);
                b.splice(to..to, piece);
            }
            Edit::Truncate(i) => {
                let i = at(i, b.len() + 1);
                b.truncate(i);
            }
            _ => {}
        }
    }
}

/// `valid` with 1 to 8 edits applied.
pub fn mutated(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (valid, proptest::collection::vec(edit(), 1..8)).prop_map(|(mut b, edits)| {
        for e in &edits {
            e.apply(&mut b);
        }
        b
    })
}

/// Random bytes (up to `max` long), half of them printable ASCII (what text parsers see).
pub fn noise(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        proptest::collection::vec(0x20u8..0x7f, 0..max),
    ]
}

/// Hostile input for a parser whose valid encodings `valid` makes: mostly mutations of
/// them, some noise.
pub fn hostile(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![4 => mutated(valid), 1 => noise(512)]
}
