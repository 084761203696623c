#!/usr/bin/env python3
"""Builds shoal's container images as one OCI image layout, without a Docker daemon.

Two images share one base layer:

  shoald              /usr/local/bin/shoald, runs as root (user 0:0): it unpacks layers
                      with any owner, device nodes, setuid bits and trusted.* xattrs, which
                      needs CAP_SYS_ADMIN, CAP_MKNOD, CAP_CHOWN and friends (see
                      systemd/shoald.service and docs/kubernetes.md).
  shoal-registry-ext  /usr/local/bin/shoal-registry-ext, runs as user shoal (65532:65532):
                      it needs no privilege (ports above 1024, files under its state dir).

Two images rather than one with both binaries: each gets its own entrypoint and user (the
registry side non-root by default, not by a manifest remembering to say so), and neither
ships the other's binary; the base layer (the shared libraries the binaries need, found
with ldd, CA certificates, /etc/passwd and /etc/group) is the same blob in both, so a
registry and a node store it once.

There is no shell, package manager or anything else: only the files above. The layout is
reproducible: every file's mtime, owner and mode are fixed (mtimes and the config's
`created` at SOURCE_DATE_EPOCH, default 0), entries are sorted, gzip headers carry no name
or time; the same binaries give the same digests.

Usage:
  scripts/build-image.py [--bin-dir DIR] [--out DIR] [--version V] [--no-strip]

  --bin-dir   where shoald and shoal-registry-ext are (env SHOAL_IMAGE_BIN_DIR; default
              $CARGO_TARGET_DIR/release, else target/release): CI passes its debug binaries
  --out       the OCI layout to write, replaced if it exists (env SHOAL_IMAGE_OUT; default
              target/oci/shoal)
  --version   the images' version annotation (default: the workspace's Cargo.toml version)
  --no-strip  keep the binaries' debug sections (default: a copy is stripped of them with
              `strip --strip-debug`; symbols stay, so backtraces keep function names)

The layout's index names the images `shoald` and `shoal-registry-ext`; push them with e.g.
  skopeo copy oci:target/oci/shoal:shoald docker://REGISTRY/shoal/shoald:0.1.0
  skopeo copy oci:target/oci/shoal:shoal-registry-ext docker://REGISTRY/shoal/shoal-registry-ext:0.1.0
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = ("shoald", "shoal-registry-ext")
NONROOT = 65532
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin"


def die(msg):
    print(f"build-image: {msg}", file=sys.stderr)
    sys.exit(1)


def workspace_version():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
    return m.group(1) if m else "0.0.0"


def oci_arch():
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def shared_libraries(binary):
    """The files `ldd` says `binary` loads, as (path in the image, file on this machine)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        die(f"ldd {binary}: {out.stderr.strip() or out.stdout.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            die(f"{binary}: a shared library is missing here: {line}")
        m = re.match(r"^\S+ => (/\S+) \(0x[0-9a-f]+\)$", line) or re.match(
            r"^(/\S+) \(0x[0-9a-f]+\)$", line
        )
        if m:
            libs.append((m.group(1), os.path.realpath(m.group(1))))
    return libs


class Layer:
    """A reproducible tar layer: entries sorted by name, fixed mtime, owner and mode."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # name -> (TarInfo, bytes or None)

    def _info(self, name, kind, mode, uid, gid):
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info

    def dir(self, name, mode=0o755, uid=0, gid=0):
        parent = os.path.dirname(name.rstrip("/"))
        if parent not in ("", "/") and parent.lstrip("/") not in self.entries:
            self.dir(parent)
        self.entries[name.strip("/")] = (self._info(name, tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, name, data, mode=0o644):
        parent = os.path.dirname(name)
        if parent.lstrip("/") not in self.entries:
            self.dir(parent)
        info = self._info(name, tarfile.REGTYPE, mode, 0, 0)
        info.size = len(data)
        self.entries[name.lstrip("/")] = (info, data)

    def blob(self):
        """(gzip bytes, sha256 of the gzip, sha256 of the tar)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                info, data = self.entries[name]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        tar_bytes = raw.getvalue()
        gz = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as g:
            g.write(tar_bytes)
        gz_bytes = gz.getvalue()
        return gz_bytes, sha256(gz_bytes), sha256(tar_bytes)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"))

    def put(self, data):
        digest = sha256(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest[7:]), "wb") as f:
            f.write(data)
        return digest


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    p.add_argument("--bin-dir", default=os.environ.get("SHOAL_IMAGE_BIN_DIR") or os.path.join(target, "release"))
    p.add_argument("--out", default=os.environ.get("SHOAL_IMAGE_OUT") or os.path.join(target, "oci", "shoal"))
    p.add_argument("--version", default=workspace_version())
    p.add_argument("--no-strip", action="store_true")
    args = p.parse_args()

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    bins = {}
    for name in BINARIES:
        path = os.path.join(args.bin_dir, name)
        if not os.path.isfile(path):
            die(
                f"{path} does not exist: build the binaries first (`cargo build --release "
                f"--workspace`) or name their directory with --bin-dir / SHOAL_IMAGE_BIN_DIR"
            )
        bins[name] = path
    if not os.path.isfile(CA_BUNDLE):
        die(f"{CA_BUNDLE} does not exist: install Debian's ca-certificates")

    # The base layer: libraries, CA certificates, users, /tmp.
    base = Layer(epoch)
    for d in ("etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/local", "usr/local/bin", "var", "var/lib", "run"):
        base.dir(d)
    base.dir("tmp", mode=0o1777)
    # The registry side's default state directory ([manifests] dir, [seed] dir), writable by
    # its user when no volume is mounted there.
    base.dir("var/lib/shoal-registry-ext", mode=0o700, uid=NONROOT, gid=NONROOT)
    base.file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n"
              b"shoal:x:65532:65532:shoal:/nonexistent:/sbin/nologin\n")
    base.file("etc/group", b"root:x:0:\nshoal:x:65532:\n")
    base.file("etc/nsswitch.conf", b"hosts: files dns\n")
    base.file(CA_BUNDLE, read(CA_BUNDLE))
    libs = {}
    for path in bins.values():
        for in_image, real in shared_libraries(path):
            libs[in_image] = real
    for in_image, real in sorted(libs.items()):
        base.file(in_image, read(real), mode=0o755)

    with tempfile.TemporaryDirectory(prefix="shoal-image-") as tmp:
        out_tmp = os.path.join(os.path.dirname(os.path.abspath(args.out)) or ".", f".{os.path.basename(args.out)}.tmp{os.getpid()}")
        os.makedirs(os.path.dirname(out_tmp), exist_ok=True)
        shutil.rmtree(out_tmp, ignore_errors=True)
        layout = Layout(out_tmp)
        with open(os.path.join(out_tmp, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        base_gz, base_digest, base_diff = base.blob()
        layout.put(base_gz)
        manifests = []
        for name, path in bins.items():
            if args.no_strip:
                data = read(path)
            else:
                stripped = os.path.join(tmp, name)
                r = subprocess.run(["strip", "--strip-debug", "-o", stripped, path], capture_output=True, text=True)
                if r.returncode != 0:
                    die(f"strip {path}: {r.stderr.strip()} (binutils; or --no-strip)")
                data = read(stripped)
            layer = Layer(epoch)
            layer.file(f"usr/local/bin/{name}", data, mode=0o755)
            gz, digest, diff = layer.blob()
            layout.put(gz)
            if name == "shoald":
                user, cmd = "0:0", ["snapshotter"]
                note = ("runs as root: unpacking layers needs CAP_SYS_ADMIN, CAP_MKNOD, CAP_CHOWN, "
                        "CAP_FOWNER, CAP_FSETID, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETFCAP")
            else:
                user, cmd = f"{NONROOT}:{NONROOT}", ["serve", "--config", "/etc/shoal/registry-ext.toml"]
                note = "runs as user shoal (65532): needs no privilege"
            labels = {
                "org.opencontainers.image.title": name,
                "org.opencontainers.image.version": args.version,
                "org.opencontainers.image.description": f"shoal {name}; {note}",
            }
            config = {
                "architecture": oci_arch(),
                "os": "linux",
                "created": created,
                "config": {
                    "User": user,
                    "Entrypoint": [f"/usr/local/bin/{name}"],
                    "Cmd": cmd,
                    "Env": [PATH_ENV, f"SSL_CERT_FILE={CA_BUNDLE}"],
                    "WorkingDir": "/",
                    "Labels": labels,
                },
                "rootfs": {"type": "layers", "diff_ids": [base_diff, diff]},
                "history": [
                    {"created": created, "created_by": "scripts/build-image.py: base (shared libraries, CA certificates, users)"},
                    {"created": created, "created_by": f"scripts/build-image.py: {name}"},
                ],
            }
            config_bytes = canonical(config)
            config_digest = layout.put(config_bytes)
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": base_digest, "size": len(base_gz)},
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": len(gz)},
                ],
                "annotations": labels,
            }
            manifest_bytes = canonical(manifest)
            manifests.append({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": layout.put(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": oci_arch(), "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": name},
            })
            print(f"{name}: {manifests[-1]['digest']} (layer {len(gz) / 1e6:.1f} MB, base {len(base_gz) / 1e6:.1f} MB)")
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
        with open(os.path.join(out_tmp, "index.json"), "wb") as f:
            f.write(canonical(index))
        shutil.rmtree(args.out, ignore_errors=True)
        os.rename(out_tmp, args.out)
    print(f"written {args.out} (images: {', '.join(BINARIES)}; push with skopeo copy oci:{args.out}:NAME docker://...)")


if __name__ == "__main__":
    main()
