//! Resolving an image reference: manifest (through an index when there is one), config,
//! layers. Docker schema2 documents parse into the same oci-spec types; their media type
//! strings are kept as sent.

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

use super::client::{read_capped, unexpected, Request};
use super::media_type as mt;
use super::{Platform, RegistryClient, RegistryError, MAX_MANIFEST_BYTES};
use crate::digest::Digest;
use crate::reference::ImageReference;

/// Everything needed to pull one image for one platform.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference as asked for.
    pub reference: ImageReference,
    /// Digest of the platform's image manifest (not of the index).
    pub manifest_digest: Digest,
    /// The manifest's media type as the registry sent it (OCI or Docker schema2).
    pub manifest_media_type: String,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    /// The manifest's layers, base first.
    pub layers: Vec<LayerInfo>,
    /// Digest of the index (or manifest list) the manifest was picked from, if any.
    pub index_digest: Option<Digest>,
}

/// One layer of a resolved image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    pub size: u64,
    /// Media type string as in the manifest.
    pub media_type: String,
    /// Uncompressed digest from the config's `rootfs.diff_ids` (when the counts match).
    pub diff_id: Option<Digest>,
}

/// A manifest or index exactly as the registry served it.
#[derive(Clone, Debug)]
pub struct RawManifest {
    /// sha256 of `bytes` (checked against the reference's digest when it has one).
    pub digest: Digest,
    /// Effective media type (from `Content-Type`, else the document's `mediaType`).
    pub media_type: String,
    pub bytes: Bytes,
}

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn is_index(m: &str) -> bool {
    m == mt::OCI_INDEX || m == mt::DOCKER_MANIFEST_LIST
}

fn is_manifest(m: &str) -> bool {
    m == mt::OCI_MANIFEST || m == mt::DOCKER_MANIFEST
}

fn is_schema1(m: &str) -> bool {
    m == mt::DOCKER_SCHEMA1 || m == mt::DOCKER_SCHEMA1_SIGNED || m == "application/json+schema1"
}

/// The document's media type, from the header when it names a manifest kind, else from the
/// body. `Err` carries the reason the document is unusable.
pub(super) fn effective_media_type(
    header: Option<&str>,
    body: &[u8],
) -> Result<String, (String, String)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        #[serde(default)]
        schema_version: Option<serde_json::Value>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        config: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        fs_layers: Option<serde::de::IgnoredAny>,
    }
    let header = header
        .map(|h| {
            h.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty());
    let peek: Peek = serde_json::from_slice(body).map_err(|e| {
        (
            header.clone().unwrap_or_default(),
            format!("not a JSON object: {e}"),
        )
    })?;
    let schema1 = peek.schema_version.as_ref().and_then(|v| v.as_u64()) == Some(1)
        || peek.fs_layers.is_some();
    if schema1 || header.as_deref().is_some_and(is_schema1) {
        return Ok(mt::DOCKER_SCHEMA1.to_string());
    }
    let body_type = peek.media_type.clone();
    let chosen = match header {
        Some(h) if is_index(&h) || is_manifest(&h) => h,
        _ => match &body_type {
            Some(b) => b.clone(),
            None if peek.manifests.is_some() => mt::OCI_INDEX.to_string(),
            None if peek.config.is_some() => mt::OCI_MANIFEST.to_string(),
            None => {
                return Err((
                    String::new(),
                    "neither Content-Type nor the document names a media type".into(),
                ))
            }
        },
    };
    if let Some(b) = &body_type {
        let kind = |m: &str| (is_index(m), is_manifest(m));
        if (is_index(b) || is_manifest(b)) && kind(b) != kind(&chosen) {
            return Err((
                chosen,
                format!("Content-Type and the document's mediaType {b:?} disagree"),
            ));
        }
    }
    Ok(chosen)
}

fn to_digest(
    d: &oci_spec::image::Digest,
    image: &ImageReference,
    what: &'static str,
) -> Result<Digest, RegistryError> {
    Digest::try_from(d).map_err(|source| RegistryError::ManifestDigest {
        repository: image.repository.clone(),
        reference: image.manifest_reference(),
        what,
        source,
    })
}

fn descriptor_platform(d: &Descriptor) -> Option<Platform> {
    d.platform().as_ref().map(Platform::from)
}

impl RegistryClient {
    /// The manifest (or index) `image` names, verified against its digest when pinned.
    pub async fn manifest(&self, image: &ImageReference) -> Result<RawManifest, crate::Error> {
        Ok(self
            .manifest_at(image, &image.manifest_reference(), image.digest.as_ref())
            .await?)
    }

    async fn manifest_at(
        &self,
        image: &ImageReference,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<RawManifest, RegistryError> {
        let url = self.url(image, &format!("manifests/{reference}"))?;
        let resp = self
            .execute(&Request {
                image,
                method: Method::GET,
                url: url.clone(),
                accept: Some(ACCEPT_MANIFESTS),
                range: None,
                whole_timeout: true,
                authorization: None,
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected(resp, "GET", &url, image).await);
        }
        let header = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(resp, MAX_MANIFEST_BYTES, &url).await?;
        let digest = Digest::of(&body);
        if let Some(expected) = expected {
            if &digest != expected {
                return Err(RegistryError::DigestMismatch {
                    repository: image.repository.clone(),
                    expected: expected.clone(),
                    actual: digest,
                    bytes: body.len() as u64,
                });
            }
        }
        let media_type = match effective_media_type(header.as_deref(), &body) {
            Ok(m) => m,
            Err((m, reason)) if m.is_empty() || is_index(&m) || is_manifest(&m) => {
                return Err(RegistryError::InvalidManifest {
                    repository: image.repository.clone(),
                    reference: reference.to_string(),
                    reason,
                })
            }
            Err((media_type, reason)) => {
                return Err(RegistryError::UnsupportedMediaType {
                    repository: image.repository.clone(),
                    reference: reference.to_string(),
                    media_type,
                    reason,
                })
            }
        };
        if is_schema1(&media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                repository: image.repository.clone(),
                reference: reference.to_string(),
                media_type,
                reason: "Docker schema1 manifests are deprecated and not supported; re-push the image with a current client".into(),
            });
        }
        if !is_index(&media_type) && !is_manifest(&media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                repository: image.repository.clone(),
                reference: reference.to_string(),
                media_type,
                reason: "not an image index or image manifest".into(),
            });
        }
        Ok(RawManifest {
            digest,
            media_type,
            bytes: Bytes::from(body),
        })
    }

    /// Resolve `image` for `platform`: fetch its manifest (picking the platform's entry from
    /// an index or manifest list), verify digests, fetch and verify the config.
    pub async fn resolve(
        &self,
        image: &ImageReference,
        platform: &Platform,
    ) -> Result<ResolvedImage, crate::Error> {
        Ok(self.resolve_at(image, platform).await?)
    }

    async fn resolve_at(
        &self,
        image: &ImageReference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let invalid = |reference: &str, reason: String| RegistryError::InvalidManifest {
            repository: image.repository.clone(),
            reference: reference.to_string(),
            reason,
        };
        let top = self
            .manifest_at(image, &image.manifest_reference(), image.digest.as_ref())
            .await?;
        let top_ref = image.manifest_reference();
        let (raw, index_digest) = if is_index(&top.media_type) {
            let index: ImageIndex = serde_json::from_slice(&top.bytes).map_err(|source| {
                RegistryError::ManifestJson {
                    repository: image.repository.clone(),
                    reference: top_ref.clone(),
                    what: "image index",
                    source,
                }
            })?;
            let chosen = pick_platform(&index, platform).ok_or_else(|| {
                RegistryError::NoMatchingPlatform {
                    repository: image.repository.clone(),
                    reference: top_ref.clone(),
                    wanted: platform.to_string(),
                    available: index
                        .manifests()
                        .iter()
                        .map(|d| match descriptor_platform(d) {
                            Some(p) => p.to_string(),
                            None => "unknown".to_string(),
                        })
                        .collect(),
                }
            })?;
            let child_type = chosen.media_type().to_string();
            if !is_manifest(&child_type) {
                return Err(invalid(
                    &top_ref,
                    format!("entry for {platform} has media type {child_type:?}, not an image manifest (nested indexes are not supported)"),
                ));
            }
            if chosen.size() > MAX_MANIFEST_BYTES {
                return Err(invalid(
                    &top_ref,
                    format!("entry for {platform} is {} bytes, over the {MAX_MANIFEST_BYTES} byte limit", chosen.size()),
                ));
            }
            let d = to_digest(chosen.digest(), image, "index entry digest")?;
            let raw = self.manifest_at(image, &d.to_string(), Some(&d)).await?;
            if !is_manifest(&raw.media_type) {
                return Err(invalid(
                    &d.to_string(),
                    format!(
                        "index entry resolved to {:?}, not an image manifest",
                        raw.media_type
                    ),
                ));
            }
            (raw, Some(top.digest))
        } else {
            (top, None)
        };
        let mref = raw.digest.to_string();
        let manifest: ImageManifest =
            serde_json::from_slice(&raw.bytes).map_err(|source| RegistryError::ManifestJson {
                repository: image.repository.clone(),
                reference: mref.clone(),
                what: "image manifest",
                source,
            })?;
        if manifest.schema_version() != 2 {
            return Err(invalid(
                &mref,
                format!("schemaVersion is {}, expected 2", manifest.schema_version()),
            ));
        }
        let config_type = manifest.config().media_type().to_string();
        if config_type != mt::OCI_CONFIG && config_type != mt::DOCKER_CONFIG {
            return Err(RegistryError::UnsupportedMediaType {
                repository: image.repository.clone(),
                reference: mref,
                media_type: config_type,
                reason: "the config is not a container image config (an artifact?)".into(),
            });
        }
        let config_size = manifest.config().size();
        if config_size > MAX_MANIFEST_BYTES {
            return Err(invalid(
                &mref,
                format!("config is {config_size} bytes, over the {MAX_MANIFEST_BYTES} byte limit"),
            ));
        }
        let config_digest = to_digest(manifest.config().digest(), image, "config digest")?;
        let config_bytes = self
            .small_blob(image, &config_digest, MAX_MANIFEST_BYTES)
            .await?;
        if config_bytes.len() as u64 != config_size {
            return Err(invalid(
                &mref,
                format!(
                    "config descriptor says {config_size} bytes, the blob has {}",
                    config_bytes.len()
                ),
            ));
        }
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| {
                RegistryError::InvalidConfigBlob {
                    repository: image.repository.clone(),
                    digest: config_digest.clone(),
                    source,
                }
            })?;
        let layers = layer_infos(&manifest, &config, image)?;
        Ok(ResolvedImage {
            reference: image.clone(),
            manifest_digest: raw.digest,
            manifest_media_type: raw.media_type,
            manifest,
            config_digest,
            config,
            layers,
            index_digest,
        })
    }
}

/// The best entry for `platform` (containerd's ranking; the first of equals).
pub(super) fn pick_platform<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
) -> Option<&'a Descriptor> {
    index
        .manifests()
        .iter()
        .filter_map(|d| Some((platform.rank(&descriptor_platform(d)?)?, d)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

pub(super) fn layer_infos(
    manifest: &ImageManifest,
    config: &ImageConfiguration,
    image: &ImageReference,
) -> Result<Vec<LayerInfo>, RegistryError> {
    let diff_ids = config.rootfs().diff_ids();
    let use_diff_ids = diff_ids.len() == manifest.layers().len();
    if !use_diff_ids {
        tracing::warn!(image = %image, layers = manifest.layers().len(), diff_ids = diff_ids.len(),
            "config rootfs.diff_ids does not match the manifest's layers; diff IDs unknown");
    }
    manifest
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(LayerInfo {
                digest: to_digest(l.digest(), image, "layer digest")?,
                size: l.size(),
                media_type: l.media_type().to_string(),
                diff_id: if use_diff_ids {
                    diff_ids[i].parse().ok()
                } else {
                    None
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_detection() {
        let m = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(effective_media_type(None, m).unwrap(), mt::OCI_MANIFEST);
        assert_eq!(
            effective_media_type(
                Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
                m
            )
            .unwrap(),
            mt::DOCKER_MANIFEST
        );
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            effective_media_type(Some("application/json"), i).unwrap(),
            mt::OCI_INDEX
        );
        let s1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert_eq!(
            effective_media_type(Some(mt::OCI_MANIFEST), s1).unwrap(),
            mt::DOCKER_SCHEMA1
        );
        let lying = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(effective_media_type(Some(mt::OCI_MANIFEST), lying).is_err());
        assert!(effective_media_type(None, b"not json").is_err());
        assert!(effective_media_type(None, b"[1,2]").is_err());
        assert!(effective_media_type(None, b"{}").is_err());
    }

    #[test]
    fn picks_platform_from_index() {
        let d = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}},
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{m}","digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}
            ]}}"#,
            d(1),
            d(2),
            d(3),
            d(4),
            d(5),
            m = mt::OCI_MANIFEST
        );
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        let pick =
            |p: &str| pick_platform(&index, &p.parse().unwrap()).map(|x| x.digest().to_string());
        assert_eq!(pick("linux/amd64"), Some(d(1)));
        assert_eq!(pick("linux/arm64"), Some(d(4)));
        assert_eq!(pick("linux/arm/v7"), Some(d(3)));
        assert_eq!(pick("linux/arm/v6"), Some(d(2)));
        assert_eq!(pick("linux/s390x"), None);
    }
}
