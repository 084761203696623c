//! Serving a snapshotter over containerd's snapshots gRPC API on a unix socket, the way
//! containerd talks to a `[proxy_plugins.NAME] type = "snapshot"`.

use std::future::Future;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::tonic::transport::Server;
use tokio::net::{UnixListener, UnixStream};

use super::{OverlaySnapshotter, SnapshotError};

/// Binds the unix socket `path`, creating its directory and replacing a stale socket left by
/// an earlier run (anything else at `path` is an error, not deleted). Needs a tokio runtime.
///
/// The socket appears at `path` only once it listens: it is bound under a temporary name
/// beside it and renamed into place. (`bind` makes the file before `listen` runs, and a
/// client that connects as soon as it sees the file, as containerd's snapshotter test suite
/// does, gets "connection refused" in between.)
pub fn bind_socket(path: &Path) -> Result<UnixListener, SnapshotError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(SnapshotError::io(dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(SnapshotError::io(path))?
        }
        Ok(_) => {
            return Err(SnapshotError::io(path)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SnapshotError::io(path)(e)),
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(SnapshotError::io(&tmp))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(SnapshotError::io(path)(e));
    }
    Ok(listener)
}

/// Serves `snapshotter` on `listener` until `shutdown` completes.
pub async fn serve<S: containerd_snapshots::Snapshotter>(
    snapshotter: S,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SnapshotError> {
    let incoming = futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    return Some((Ok::<UnixStream, std::io::Error>(stream), listener))
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(error = %e, "snapshotter socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(snapshotter)))
        .serve_with_incoming_shutdown(Box::pin(incoming), shutdown)
        .await
        .map_err(SnapshotError::Grpc)
}

/// How long shoald waits on shutdown for the mirror's downloads in flight, after the
/// snapshotter's calls in flight finished (systemd's TimeoutStopSec is 30 s; the Kubernetes
/// DaemonSet's terminationGracePeriodSeconds 60).
pub const MIRROR_DRAIN: Duration = Duration::from_secs(25);

/// Opens the overlay snapshotter at `root` with the remote (CRI streaming) path of
/// [`crate::remote`] and the node's swarm ([`crate::node`]) built from `config`, and serves it on the unix socket `address` until
/// `shutdown` completes; the socket file is removed afterwards.
pub async fn run(
    root: &Path,
    address: &Path,
    config: &crate::config::Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::Error> {
    let root_owned = root.to_owned();
    let config = config.clone();
    let client = shoal_p2p::registry::RegistryClient::new(config.registry.clone())
        .map_err(crate::Error::from)?;
    // The swarm peer, the announcer and the metrics endpoint run as long as the snapshotter.
    let node = crate::node::Node::start(&config, client).await;
    let health = node.health.clone();
    let blobs = node.blobs.clone();
    let pulls = node.pulls.clone();
    let snapshotter = tokio::task::spawn_blocking(move || {
        let sn = OverlaySnapshotter::open(&root_owned)?;
        let remote = crate::remote::RemoteLayers::new(&config, &sn, blobs)?.with_metrics(pulls);
        Ok::<_, crate::Error>(sn.with_interceptor(Arc::new(remote)))
    })
    .await
    .map_err(|source| crate::Error::Task {
        what: "opening the snapshotter",
        source,
    })??;
    health.up(crate::health::Component::Remote);
    let listener = bind_socket(address)?;
    health.set_detail(
        crate::health::Component::Snapshotter,
        format!("serving {}", address.display()),
    );
    health.up(crate::health::Component::Snapshotter);
    tracing::info!(root = %root.display(), address = %address.display(), "snapshotter serving");
    let status = format!("serving {}; {}", address.display(), health.summary());
    if let Err(e) = crate::sd_notify::ready(&status) {
        tracing::warn!(error = %e, "sd_notify READY=1");
    }
    // On shutdown the gRPC server takes no new calls and waits for those in flight (a
    // Prepare waits for its layer), while the mirror, told at the same moment, takes no new
    // connection and finishes the blobs it is sending; then the rest stops.
    let stop = node.stop_handle();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("stopping: finishing the snapshotter calls and mirror downloads in flight");
        stop.stop();
    };
    let served = serve(snapshotter, listener, shutdown).await;
    let mut node = node;
    node.drain(MIRROR_DRAIN).await;
    drop(node);
    let _ = std::fs::remove_file(address);
    Ok(served?)
}
