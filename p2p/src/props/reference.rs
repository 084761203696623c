//! Image references (`crate::reference`), as they arrive in preheat jobs, the mirror's
//! requests and CRI labels.

use proptest::prelude::*;

use super::{alloc, digest, mutate};
use crate::reference::{ImageReference, MAX_REFERENCE_LEN};

/// References as people write them: with or without a registry (host, port, localhost),
/// nested repositories, a tag, a digest, or both.
fn reference() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        Just(String::new()),
        Just("localhost/".to_string()),
        Just("docker.io/".to_string()),
        Just("index.docker.io/".to_string()),
        "[a-z0-9]{1,10}(\\.[a-z]{2,5}){1,2}(:[1-9][0-9]{0,3})?/",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[1-9][0-9]{0,3}/",
    ];
    let repo = "[a-z0-9]{1,8}([._-][a-z0-9]{1,5})?(/[a-z0-9]{1,8}([._-][a-z0-9]{1,5})?){0,3}";
    let tag = proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}");
    (host, repo, tag, proptest::option::of(digest())).prop_map(|(h, r, t, d)| {
        let mut s = format!("{h}{r}");
        if let Some(t) = t {
            s.push(':');
            s.push_str(&t);
        }
        if let Some(d) = d {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    })
}

proptest! {
    #![proptest_config(mutate::config())]

    /// Parse, print, parse again: the same reference (printing is canonical).
    #[test]
    fn references_round_trip(s in reference()) {
        let r: ImageReference = s.parse().unwrap();
        let printed = r.to_string();
        prop_assert_eq!(printed.parse::<ImageReference>().unwrap(), r.clone());
        prop_assert_eq!(r.to_string(), printed);
    }

    #[test]
    fn hostile_references(bytes in mutate::hostile(reference().prop_map(String::into_bytes))) {
        let s = String::from_utf8_lossy(&bytes);
        let parsed = alloc::bounded("reference", s.len(), 16, 4 << 10, || s.parse::<ImageReference>());
        match parsed {
            Ok(r) => {
                prop_assert!(s.len() <= MAX_REFERENCE_LEN);
                prop_assert_eq!(r.to_string().parse::<ImageReference>().unwrap(), r);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
