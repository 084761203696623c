//! Test images written directly as OCI image layouts, and pushed with skopeo.
//!
//! [`LayerBuilder`] writes tar streams entry by entry with full control of the headers (device
//! numbers, PAX xattrs, GNU long names, GNU sparse entries, whiteouts), so a test image can
//! hold every kind of entry a real layer may carry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;
use shoal_p2p::Digest;
use tar::{EntryType, Header};

use crate::tools::run;

/// The chain IDs of `layers`, bottom first: the names containerd gives their snapshots.
pub fn chain_ids(layers: &[Layer]) -> Vec<String> {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    shoal_plugin::remote::chain_ids(&diff_ids)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compresses a tar stream.
    pub fn compress(self, tar: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar).expect("gzip into memory");
                enc.finish().expect("gzip into memory")
            }
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd into memory"),
        }
    }
}

/// A finished layer: the blob and the digests that name it.
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
}

impl Layer {
    pub fn new(tar: &[u8], compression: Compression) -> Self {
        let blob = compression.compress(tar);
        Self {
            digest: Digest::of(&blob),
            diff_id: Digest::of(tar),
            media_type: compression.media_type().to_string(),
            blob,
        }
    }
}

/// Attributes of one tar entry.
#[derive(Clone, Debug)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    pub fn new(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            xattrs: Vec::new(),
        }
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
}

/// Writes a layer tar entry by entry.
pub struct LayerBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(&mut self, kind: EntryType, attrs: &Attrs, size: u64) -> Result<Header> {
        if !attrs.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = attrs
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(attrs.mode);
        h.set_uid(attrs.uid);
        h.set_gid(attrs.gid);
        h.set_mtime(attrs.mtime);
        h.set_size(size);
        Ok(h)
    }

    pub fn dir(&mut self, path: &str, attrs: Attrs) -> Result<&mut Self> {
        let mut h = self.header(EntryType::Directory, &attrs, 0)?;
        self.builder.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    pub fn file(&mut self, path: &str, attrs: Attrs, data: &[u8]) -> Result<&mut Self> {
        let mut h = self.header(EntryType::Regular, &attrs, data.len() as u64)?;
        self.builder.append_data(&mut h, path, data)?;
        Ok(self)
    }

    pub fn symlink(&mut self, path: &str, target: &str, attrs: Attrs) -> Result<&mut Self> {
        let mut h = self.header(EntryType::Symlink, &attrs, 0)?;
        self.builder.append_link(&mut h, path, target)?;
        Ok(self)
    }

    pub fn hardlink(&mut self, path: &str, target: &str, attrs: Attrs) -> Result<&mut Self> {
        let mut h = self.header(EntryType::Link, &attrs, 0)?;
        self.builder.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// A character (`block == false`) or block device.
    pub fn device(
        &mut self,
        path: &str,
        block: bool,
        major: u32,
        minor: u32,
        attrs: Attrs,
    ) -> Result<&mut Self> {
        let kind = if block {
            EntryType::Block
        } else {
            EntryType::Char
        };
        let mut h = self.header(kind, &attrs, 0)?;
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.builder.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    pub fn fifo(&mut self, path: &str, attrs: Attrs) -> Result<&mut Self> {
        let mut h = self.header(EntryType::Fifo, &attrs, 0)?;
        self.builder.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    /// An overlay-style whiteout for `path` in the tar (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> Result<&mut Self> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), Attrs::new(0o644), b"")
    }

    /// Marks directory `dir` opaque (`dir/.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Self> {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            Attrs::new(0o644),
            b"",
        )
    }

    /// An old-GNU sparse file ('S'): `chunks` are (offset, data) pairs, `real_size` the
    /// file's full size; the holes read as zeros.
    pub fn sparse_file(
        &mut self,
        path: &str,
        attrs: Attrs,
        chunks: &[(u64, Vec<u8>)],
        real_size: u64,
    ) -> Result<&mut Self> {
        assert!(chunks.len() <= 4, "only the header's four sparse slots");
        let stored: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        let mut h = self.header(EntryType::GNUSparse, &attrs, stored.len() as u64)?;
        let gnu = h.as_gnu_mut().expect("gnu header");
        for (slot, (offset, data)) in gnu.sparse.iter_mut().zip(chunks) {
            octal(&mut slot.offset, *offset);
            octal(&mut slot.numbytes, data.len() as u64);
        }
        octal(&mut gnu.realsize, real_size);
        self.builder.append_data(&mut h, path, stored.as_slice())?;
        Ok(self)
    }

    /// Every file under `src` (not following symlinks), named under `prefix` in the layer,
    /// with the files' own modes, owners and mtimes.
    pub fn tree(&mut self, prefix: &str, src: &Path) -> Result<&mut Self> {
        self.builder.follow_symlinks(false);
        self.builder.mode(tar::HeaderMode::Complete);
        self.builder
            .append_dir_all(prefix, src)
            .with_context(|| format!("adding {src:?} to the layer"))?;
        Ok(self)
    }

    /// A PAX GNU sparse 1.0 file (what GNU tar writes with `--sparse --format=pax`, and what
    /// Go's archive/tar, so containerd, reads): `chunks` are (offset, data) pairs, the holes
    /// read as zeros.
    pub fn sparse_file_pax(
        &mut self,
        path: &str,
        attrs: Attrs,
        chunks: &[(u64, Vec<u8>)],
        real_size: u64,
    ) -> Result<&mut Self> {
        let mut map = format!("{}\n", chunks.len());
        for (offset, data) in chunks {
            map.push_str(&format!("{offset}\n{}\n", data.len()));
        }
        let mut body = map.into_bytes();
        body.resize(body.len().div_ceil(512) * 512, 0);
        for (_, data) in chunks {
            body.extend_from_slice(data);
        }
        let real = real_size.to_string();
        let mut records: Vec<(String, Vec<u8>)> = vec![
            ("GNU.sparse.major".into(), b"1".to_vec()),
            ("GNU.sparse.minor".into(), b"0".to_vec()),
            ("GNU.sparse.name".into(), path.as_bytes().to_vec()),
            ("GNU.sparse.realsize".into(), real.into_bytes()),
        ];
        for (k, v) in &attrs.xattrs {
            records.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        let plain = Attrs {
            xattrs: Vec::new(),
            ..attrs
        };
        let mut h = self.header(EntryType::Regular, &plain, body.len() as u64)?;
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let stored = if dir.is_empty() {
            format!("GNUSparseFile.0/{name}")
        } else {
            format!("{dir}/GNUSparseFile.0/{name}")
        };
        self.builder.append_data(&mut h, stored, body.as_slice())?;
        Ok(self)
    }

    /// The finished tar stream.
    pub fn finish(self) -> Result<Vec<u8>> {
        Ok(self.builder.into_inner()?)
    }
}

/// Writes `value` as a NUL-terminated octal number filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let s = format!("{:0width$o}\0", value, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// Writes `layers` as a single-platform image for this host into a layout under `work`
/// (`layout-REPO`), pushes it as `registry/repo:v1` with skopeo, and returns that reference.
pub fn push_host_image(
    work: &Path,
    registry: &str,
    repo: &str,
    layers: &[Layer],
) -> Result<String> {
    let layout = OciLayout::create(&work.join(format!("layout-{}", repo.replace('/', "-"))))?;
    let platform = shoal_p2p::registry::Platform::host();
    layout.add(
        "v1",
        &[PlatformImage {
            os: platform.os,
            architecture: platform.architecture,
            layers: layers.to_vec(),
        }],
    )?;
    layout.push("v1", registry, repo)?;
    Ok(format!("{registry}/{repo}:v1"))
}

/// One platform's image inside a layout.
pub struct PlatformImage {
    pub os: String,
    pub architecture: String,
    pub layers: Vec<Layer>,
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    pub fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn write_blob(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        fs::write(self.dir.join("blobs/sha256").join(digest.hex()), data)?;
        Ok(digest)
    }

    /// Writes config and manifest for one platform; returns the manifest descriptor.
    fn write_image(&self, image: &PlatformImage) -> Result<serde_json::Value> {
        for layer in &image.layers {
            fs::write(
                self.dir.join("blobs/sha256").join(layer.digest.hex()),
                &layer.blob,
            )?;
        }
        let config = serde_json::to_vec(&json!({
            "architecture": image.architecture,
            "os": image.os,
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": image.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            },
            "history": image.layers.iter().map(|_| json!({"created_by": "shoal test"})).collect::<Vec<_>>(),
        }))?;
        let config_digest = self.write_blob(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": image.layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest.to_string(),
                "size": l.blob.len(),
            })).collect::<Vec<_>>(),
        }))?;
        let digest = self.write_blob(&manifest)?;
        Ok(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest.to_string(),
            "size": manifest.len(),
            "platform": {"architecture": image.architecture, "os": image.os},
        }))
    }

    /// Adds `images` under `tag`: a single manifest, or an image index when there are several
    /// platforms. Returns the digest the tag points at.
    pub fn add(&self, tag: &str, images: &[PlatformImage]) -> Result<Digest> {
        let manifests = images
            .iter()
            .map(|i| self.write_image(i))
            .collect::<Result<Vec<_>>>()?;
        let mut top = if let [only] = manifests.as_slice() {
            only.clone()
        } else {
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }))?;
            let digest = self.write_blob(&index)?;
            json!({
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": digest.to_string(),
                "size": index.len(),
            })
        };
        top.as_object_mut().expect("descriptor object").insert(
            "annotations".into(),
            json!({"org.opencontainers.image.ref.name": tag}),
        );
        let digest: Digest = top["digest"].as_str().unwrap_or_default().parse()?;
        let index_path = self.dir.join("index.json");
        let mut index: serde_json::Value = match fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b)?,
            Err(_) => json!({"schemaVersion": 2, "manifests": []}),
        };
        index["manifests"]
            .as_array_mut()
            .context("index.json manifests")?
            .push(top);
        fs::write(index_path, serde_json::to_vec_pretty(&index)?)?;
        Ok(digest)
    }

    /// Pushes `tag` (all platforms) to `registry/repo:tag` over plain HTTP with skopeo.
    pub fn push(&self, tag: &str, registry: &str, repo: &str) -> Result<()> {
        run(Command::new("skopeo")
            .args([
                "copy",
                "--all",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{tag}", self.dir.display()))
            .arg(format!("docker://{registry}/{repo}:{tag}")))?;
        Ok(())
    }
}
