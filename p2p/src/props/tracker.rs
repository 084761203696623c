//! The tracker protocol (`crate::tracker::proto`): chunk sets, announces, peer lists, as the
//! tracker receives and the nodes get them; and the node's merge of several trackers' lists.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::{alloc, digest, mutate, text};
use crate::tracker::http::merge_peer_lists;
use crate::tracker::proto::{ErrorBody, MAX_CHUNKS};
use crate::tracker::{
    Announce, AnnounceReply, BlobHave, ChunkSet, PeerEntry, PeerList, UploadStats,
};

/// A chunk set of up to 3000 chunks, its bits from a seed (a strategy per bit is slow).
fn chunk_set() -> impl Strategy<Value = ChunkSet> {
    (0u32..3000, any::<u64>(), 0u32..4).prop_map(|(len, seed, density)| {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut s = ChunkSet::empty(len);
        for i in 0..len {
            if rng.u32(0..4) < density {
                s.insert(i);
            }
        }
        s
    })
}

/// Any address as the wire spells it (`ip:port`; an IPv6 flow label does not travel).
fn addr() -> impl Strategy<Value = SocketAddr> {
    (any::<std::net::IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn upload() -> impl Strategy<Value = UploadStats> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(c, r, a, m)| UploadStats {
        capacity_bytes_per_sec: c,
        rate_bytes_per_sec: r,
        active: a,
        max: m,
    })
}

fn blob_have() -> impl Strategy<Value = BlobHave> {
    (digest(), chunk_set(), any::<bool>()).prop_map(|(d, set, fetching)| {
        let b = BlobHave::new(d, &set);
        if fetching {
            let mut f = ChunkSet::empty(set.len());
            f.insert(set.len() / 2);
            b.with_fetching(&f)
        } else {
            b
        }
    })
}

fn announce() -> impl Strategy<Value = Announce> {
    (
        text(40),
        addr(),
        upload(),
        proptest::collection::vec(blob_have(), 0..4),
    )
        .prop_map(|(peer_id, addr, upload, blobs)| Announce {
            peer_id,
            addr,
            upload,
            blobs,
        })
}

fn peer_entry() -> impl Strategy<Value = PeerEntry> {
    (text(20), addr(), blob_have(), upload()).prop_map(|(peer_id, addr, b, upload)| PeerEntry {
        peer_id,
        addr,
        chunks: b.chunks,
        have: b.have,
        upload,
        fetching: b.fetching,
    })
}

fn peer_list() -> impl Strategy<Value = PeerList> {
    (digest(), proptest::collection::vec(peer_entry(), 0..6))
        .prop_map(|(digest, peers)| PeerList { digest, peers })
}

/// Decodes both chunk sets of an entry, bounded by the input and the protocol's cap.
fn decode_entry(have: &str, fetching: Option<&str>, chunks: u32) {
    let set = alloc::bounded("chunk set", have.len(), 4, 1 << 10, || {
        ChunkSet::decode(have, chunks)
    });
    if let Ok(s) = set {
        assert_eq!(s.len(), chunks);
        assert!(s.len() <= MAX_CHUNKS);
        assert!(s.iter().all(|i| i < chunks));
    }
    if let Some(f) = fetching {
        let _ = ChunkSet::decode(f, chunks);
    }
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn chunk_sets_round_trip(s in chunk_set()) {
        prop_assert_eq!(ChunkSet::decode(&s.encode(), s.len()).unwrap(), s);
    }

    /// Any text for any declared chunk count: bounded by the text (the bitmap) or, for
    /// `"all"`, by the protocol's cap, and never past it.
    #[test]
    fn chunk_set_decoding_is_bounded(
        text in prop_oneof![
            Just("all".to_string()),
            "[A-Za-z0-9+/=]{0,40}",
            any::<String>(),
        ],
        len in prop_oneof![0u32..100, any::<u32>(), Just(u32::MAX), Just(MAX_CHUNKS + 1)],
    ) {
        let cap = (MAX_CHUNKS as usize).div_ceil(8);
        let got = alloc::bounded("chunk set", text.len(), 4, cap + 1024, || {
            ChunkSet::decode(&text, len)
        });
        match got {
            Ok(s) => {
                prop_assert!(len <= MAX_CHUNKS);
                prop_assert_eq!(s.len(), len);
                prop_assert!(s.count() <= len);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn messages_round_trip(a in announce(), l in peer_list(), ms in any::<u64>()) {
        let json = serde_json::to_vec(&a).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Announce>(&json).unwrap(), a);
        let json = serde_json::to_vec(&l).unwrap();
        prop_assert_eq!(serde_json::from_slice::<PeerList>(&json).unwrap(), l);
        let reply = AnnounceReply { interval_ms: ms };
        let json = serde_json::to_vec(&reply).unwrap();
        prop_assert_eq!(serde_json::from_slice::<AnnounceReply>(&json).unwrap(), reply);
    }

    /// An announce as the tracker receives it.
    #[test]
    fn hostile_announces(
        bytes in mutate::hostile(announce().prop_map(|a| serde_json::to_vec(&a).unwrap()))
    ) {
        let parsed = alloc::bounded("announce", bytes.len(), 16, 64 << 10, || {
            serde_json::from_slice::<Announce>(&bytes)
        });
        if let Ok(a) = parsed {
            for b in &a.blobs {
                decode_entry(&b.have, b.fetching.as_deref(), b.chunks);
            }
        }
    }

    /// A peer list as a node receives it from its trackers, merged as the node merges it.
    #[test]
    fn hostile_peer_lists(
        lists in proptest::collection::vec(
            mutate::hostile(peer_list().prop_map(|l| serde_json::to_vec(&l).unwrap())),
            1..3,
        )
    ) {
        let parsed: Vec<PeerList> = lists
            .iter()
            .filter_map(|b| {
                alloc::bounded("peer list", b.len(), 16, 64 << 10, || {
                    serde_json::from_slice::<PeerList>(b)
                })
                .ok()
            })
            .collect();
        let Some(first) = parsed.first() else { return Ok(()) };
        let digest = first.digest.clone();
        let input: usize = lists.iter().map(Vec::len).sum();
        for e in parsed.iter().flat_map(|l| &l.peers) {
            decode_entry(&e.have, e.fetching.as_deref(), e.chunks);
        }
        let merged = alloc::bounded("merged peer lists", input, 16, 64 << 10, || {
            merge_peer_lists(&digest, parsed.into_iter().map(|l| l.peers).collect(), "me")
        });
        for e in merged {
            prop_assert!(e.peer_id != "me");
            prop_assert!(e.set().is_ok());
        }
    }

    #[test]
    fn hostile_error_bodies(bytes in mutate::hostile(
        text(80).prop_map(|error| serde_json::to_vec(&ErrorBody { error }).unwrap())
    )) {
        let _ = serde_json::from_slice::<ErrorBody>(&bytes);
    }
}

/// The bug the properties found: a declared chunk count with `"all"` (or no `fetching`)
/// allocated its bitmap whatever its size (512 MiB and 4 billion steps for `u32::MAX`), from
/// a 30-byte peer list entry.
#[test]
fn a_chunk_count_past_the_cap_is_refused_before_allocating() {
    for len in [MAX_CHUNKS + 1, 1 << 24, u32::MAX] {
        let (got, bytes) = alloc::peak(|| ChunkSet::decode("all", len));
        assert!(got.is_err(), "{len} chunks accepted");
        assert!(bytes < 4096, "{len} chunks: {bytes} bytes allocated");
        let entry = BlobHave {
            digest: crate::Digest::of(b"x"),
            chunks: len,
            have: "AA".into(),
            fetching: None,
        };
        let (got, bytes) = alloc::peak(|| entry.fetching_set());
        assert!(got.is_err(), "{len} chunks accepted");
        assert!(bytes < 4096, "{len} chunks: {bytes} bytes allocated");
    }
    // The cap itself is fine, and "all" is quick (a fill, not one step per chunk).
    let all = ChunkSet::decode("all", MAX_CHUNKS).unwrap();
    assert!(all.is_full());
    assert_eq!(all.count(), MAX_CHUNKS);
}
