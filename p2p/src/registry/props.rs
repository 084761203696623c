//! Property tests of the registry client's parsers (see `crate::props`): `WWW-Authenticate`
//! challenges, token answers, OCI error bodies, and manifests, indexes and configs as a
//! registry (or anything answering in its place) sends them.

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use proptest::prelude::*;

use super::auth::{parse_www_authenticate, TokenResponse};
use super::media_type as mt;
use super::resolve::{effective_media_type, layer_infos, pick_platform};
use super::{parse_error_body, Platform};
use crate::props::{alloc, digest, mutate, text};
use crate::reference::ImageReference;

/// A challenge as a server writes it: a scheme and `name="value"` parameters (quotes and
/// backslashes escaped).
fn challenge() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    (
        "[A-Za-z][A-Za-z0-9._~+/-]{0,10}",
        proptest::collection::vec(("[A-Za-z][A-Za-z0-9_-]{0,8}", text(30)), 0..4),
    )
        .prop_map(|(scheme, mut params)| {
            // Later duplicates win in the parser; keep the names unique to compare.
            let mut seen = std::collections::BTreeSet::new();
            params.retain(|(k, _)| seen.insert(k.to_ascii_lowercase()));
            (scheme, params)
        })
}

fn write_challenges(cs: &[(String, Vec<(String, String)>)]) -> String {
    cs.iter()
        .map(|(scheme, params)| {
            let params: Vec<String> = params
                .iter()
                .map(|(k, v)| {
                    let v = v.replace('\\', "\\\\").replace('"', "\\\"");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            format!("{scheme} {}", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn platform_json() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("linux"), Just("windows"), Just("")],
        prop_oneof![Just("amd64"), Just("arm64"), Just("arm"), Just("386")],
        prop_oneof![Just(""), Just("v7"), Just("v8")],
    )
        .prop_map(|(os, arch, variant)| {
            format!(r#"{{"os":"{os}","architecture":"{arch}","variant":"{variant}"}}"#)
        })
}

fn index_json() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((digest(), any::<u32>(), platform_json()), 0..4).prop_map(|m| {
        let entries: Vec<String> = m
            .into_iter()
            .map(|(d, size, p)| {
                format!(
                    r#"{{"mediaType":"{}","digest":"{d}","size":{size},"platform":{p}}}"#,
                    mt::OCI_MANIFEST
                )
            })
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#,
            mt::OCI_INDEX,
            entries.join(",")
        )
        .into_bytes()
    })
}

fn manifest_and_config() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (digest(), proptest::collection::vec((digest(), any::<u64>(), digest()), 0..4)).prop_map(
        |(config, layers)| {
            let l: Vec<String> = layers
                .iter()
                .map(|(d, size, _)| {
                    format!(
                        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{size}}}"#
                    )
                })
                .collect();
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":7}},"layers":[{}]}}"#,
                mt::OCI_MANIFEST,
                l.join(",")
            );
            let diff_ids: Vec<String> = layers.iter().map(|(_, _, d)| format!("\"{d}\"")).collect();
            let config = format!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
                diff_ids.join(",")
            );
            (manifest.into_bytes(), config.into_bytes())
        },
    )
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn challenges_round_trip(cs in proptest::collection::vec(challenge(), 1..3)) {
        let parsed = parse_www_authenticate(&write_challenges(&cs));
        prop_assert_eq!(parsed.len(), cs.len());
        for (got, (scheme, params)) in parsed.iter().zip(&cs) {
            prop_assert_eq!(&got.scheme, &scheme.to_ascii_lowercase());
            prop_assert_eq!(got.params.len(), params.len());
            for (k, v) in params {
                prop_assert_eq!(got.param(&k.to_ascii_lowercase()), Some(v.as_str()));
            }
        }
    }

    #[test]
    fn hostile_challenges(bytes in mutate::hostile(
        proptest::collection::vec(challenge(), 1..3).prop_map(|c| write_challenges(&c).into_bytes())
    )) {
        let header = String::from_utf8_lossy(&bytes);
        let parsed = alloc::bounded("WWW-Authenticate", header.len(), 32, 1 << 10, || {
            parse_www_authenticate(&header)
        });
        prop_assert!(parsed.len() <= header.len());
    }

    #[test]
    fn hostile_token_answers(bytes in mutate::hostile(
        ("[ -~]{0,40}", any::<i64>()).prop_map(|(t, e)| {
            format!(r#"{{"token":{t:?},"access_token":"a","expires_in":{e}}}"#).into_bytes()
        })
    )) {
        let parsed = alloc::bounded("token answer", bytes.len(), 16, 1 << 10, || {
            serde_json::from_slice::<TokenResponse>(&bytes)
        });
        if let Ok(t) = parsed {
            if let Ok((token, lifetime)) = t.into_token() {
                prop_assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(lifetime.as_secs() <= 24 * 3600 && !lifetime.is_zero());
            }
        }
    }

    #[test]
    fn hostile_error_bodies(bytes in mutate::hostile(
        proptest::collection::vec(("[A-Z_]{0,12}", text(40)), 0..12).prop_map(|e| {
            let errors: Vec<_> = e
                .into_iter()
                .map(|(code, message)| serde_json::json!({"code": code, "message": message, "detail": {"x": 1}}))
                .collect();
            serde_json::to_vec(&serde_json::json!({ "errors": errors })).unwrap()
        })
    )) {
        let errors = alloc::bounded("error body", bytes.len(), 16, 16 << 10, || {
            parse_error_body(&bytes)
        });
        prop_assert!(errors.len() <= 8);
        for e in errors {
            prop_assert!(e.message.chars().count() <= 259);
            prop_assert!(e.detail.is_none_or(|d| d.chars().count() <= 259));
        }
    }

    /// An index as a registry answers it: its media type, then the entry for a platform.
    #[test]
    fn hostile_indexes(
        bytes in mutate::hostile(index_json()),
        header in prop_oneof![
            Just(None),
            Just(Some(mt::OCI_INDEX.to_string())),
            Just(Some(mt::OCI_MANIFEST.to_string())),
            proptest::option::of(text(40)),
        ],
    ) {
        let kind = alloc::bounded("media type", bytes.len(), 16, 1 << 10, || {
            effective_media_type(header.as_deref(), &bytes)
        });
        if let Err((_, reason)) = kind {
            prop_assert!(!reason.is_empty());
        }
        let index = alloc::bounded("index", bytes.len(), 32, 64 << 10, || {
            serde_json::from_slice::<ImageIndex>(&bytes)
        });
        if let Ok(index) = index {
            for p in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"] {
                let _ = pick_platform(&index, &p.parse::<Platform>().unwrap());
            }
        }
    }

    /// A manifest and its config: the layers, with diff IDs only when they line up.
    #[test]
    fn hostile_manifests(
        (manifest, config) in manifest_and_config()
            .prop_flat_map(|(m, c)| (mutate::hostile(Just(m)), prop_oneof![Just(c.clone()), mutate::hostile(Just(c))]))
    ) {
        let image: ImageReference = "r.example/a:1".parse().unwrap();
        let m = alloc::bounded("manifest", manifest.len(), 32, 64 << 10, || {
            serde_json::from_slice::<ImageManifest>(&manifest)
        });
        let c = alloc::bounded("config", config.len(), 32, 64 << 10, || {
            serde_json::from_slice::<ImageConfiguration>(&config)
        });
        if let (Ok(m), Ok(c)) = (m, c) {
            if let Ok(layers) = layer_infos(&m, &c, &image) {
                prop_assert_eq!(layers.len(), m.layers().len());
            }
        }
    }

    #[test]
    fn platforms_parse_or_refuse(s in prop_oneof![
        "[a-z0-9]{1,8}/[a-z0-9]{1,8}(/[a-z0-9]{1,4})?",
        text(80),
    ]) {
        if let Ok(p) = s.parse::<Platform>() {
            prop_assert_eq!(p.to_string().parse::<Platform>().unwrap(), p);
        }
    }
}
