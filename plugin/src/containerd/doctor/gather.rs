//! The doctor's I/O: asks containerd's socket, probes shoald's sockets, reads the files.
//! Nothing is written anywhere.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::StatSnapshotRequest;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::PluginsRequest;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Status};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{ImageFsInfoRequest, StatusRequest};

use super::facts::{
    ContainerdFile, CriFacts, Facts, FileFacts, HostsFile, PluginFact, Probe, ShoaldFacts,
    StatusConfig,
};
use super::{effective_config_path, DoctorError};
use crate::config::Config;
use crate::containerd::{ContainerdVersion, SNAPSHOTTER_NAME, SNAPSHOT_PLUGIN_TYPE};
use crate::mirror::hosts::{mirror_url, namespaces, DEFAULT_NAMESPACE};

/// What `shoald doctor` looks at.
#[derive(Debug, Clone)]
pub struct Options {
    /// containerd's gRPC socket.
    pub containerd_address: PathBuf,
    /// containerd's config file.
    pub containerd_config: PathBuf,
    /// shoald's config file (`None`: its defaults).
    pub shoald_config: Option<PathBuf>,
}

/// How long each call to containerd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a probe of shoald's sockets may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Collects the facts. Errors only when the doctor cannot tell: containerd unreachable, a
/// config file unreadable or malformed.
pub async fn gather(options: &Options) -> Result<Facts, DoctorError> {
    let socket = options.containerd_address.clone();
    // Files first: a malformed file is an error whether containerd runs or not.
    let file = read_containerd_file(&options.containerd_config)?;
    let config = Config::load(options.shoald_config.as_deref())?;

    let channel = within(CALL_TIMEOUT, containerd_client::connect(&socket))
        .await
        .map_err(|()| DoctorError::Timeout {
            socket: socket.clone(),
            call: "connect",
            secs: CALL_TIMEOUT.as_secs(),
        })?
        .map_err(|source| DoctorError::Connect {
            socket: socket.clone(),
            source,
        })?;
    let version_text = answer(
        &socket,
        "Version",
        within(
            CALL_TIMEOUT,
            VersionClient::new(channel.clone()).version(()),
        )
        .await,
    )?
    .version;
    let version: ContainerdVersion =
        version_text
            .parse()
            .map_err(|source| DoctorError::Version {
                socket: socket.clone(),
                source,
            })?;
    let mut introspection = IntrospectionClient::new(channel.clone());
    let plugins = answer(
        &socket,
        "introspection Plugins",
        within(
            CALL_TIMEOUT,
            introspection.plugins(PluginsRequest { filters: vec![] }),
        )
        .await,
    )?
    .plugins
    .into_iter()
    .map(|p| PluginFact {
        kind: p.r#type,
        id: p.id,
        exports: p.exports.into_iter().collect::<BTreeMap<_, _>>(),
        capabilities: p.capabilities,
        init_error: p.init_err.map(|e| e.message),
    })
    .collect::<Vec<_>>();
    let cri = cri_facts(channel).await;

    let address = plugins
        .iter()
        .find(|p| p.kind == SNAPSHOT_PLUGIN_TYPE && p.id == SNAPSHOTTER_NAME)
        .and_then(|p| p.exports.get("address").cloned())
        .or_else(|| {
            file.content
                .as_ref()
                .and_then(|c| c.proxy.as_ref())
                .and_then(|p| p.address.clone())
        });
    let shoal_socket = match address {
        Some(a) => Some(probe_snapshotter(Path::new(&a)).await),
        None => None,
    };

    let mirror_listening = if config.mirror.enabled {
        Some(
            match within(
                PROBE_TIMEOUT,
                tokio::net::TcpStream::connect(config.mirror.listen),
            )
            .await
            {
                Ok(Ok(_)) => Probe::Answers,
                Ok(Err(e)) => Probe::Fails(e.to_string()),
                Err(()) => Probe::Fails(format!("no answer within {PROBE_TIMEOUT:?}")),
            },
        )
    } else {
        None
    };
    let config_path = effective_config_path(version, &file, cri.status_config.as_ref());
    let hosts = if config_path.is_empty() {
        Vec::new()
    } else {
        let roots: Vec<&str> = config_path.split(':').filter(|r| !r.is_empty()).collect();
        namespaces(&config)
            .into_iter()
            .map(|ns| hosts_file(&roots, ns))
            .collect()
    };
    Ok(Facts {
        address: socket,
        version,
        plugins,
        cri,
        shoal_socket,
        file,
        shoald: ShoaldFacts {
            mirror_enabled: config.mirror.enabled,
            mirror_url: mirror_url(&config),
            mirror_listening,
            hosts_dir: config.mirror.hosts_dir.clone(),
        },
        hosts,
    })
}

/// A call's answer, or the error naming the call.
fn answer<T>(
    socket: &Path,
    call: &'static str,
    r: Result<Result<containerd_client::tonic::Response<T>, Status>, ()>,
) -> Result<T, DoctorError> {
    match r {
        Err(()) => Err(DoctorError::Timeout {
            socket: socket.to_owned(),
            call,
            secs: CALL_TIMEOUT.as_secs(),
        }),
        Ok(Err(status)) => Err(DoctorError::Call {
            socket: socket.to_owned(),
            call,
            status: Box::new(status),
        }),
        Ok(Ok(v)) => Ok(v.into_inner()),
    }
}

/// Why a CRI call failed, `None` when it answered.
fn failure<T>(r: &Result<Result<T, Status>, ()>) -> Option<String> {
    match r {
        Err(()) => Some(format!("no answer within {CALL_TIMEOUT:?}")),
        Ok(Err(s)) => Some(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(_)) => None,
    }
}

/// `fut`, or `Err(())` after `limit`.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, ()> {
    tokio::time::timeout(limit, fut).await.map_err(|_| ())
}

fn read_containerd_file(path: &Path) -> Result<FileFacts, DoctorError> {
    let content = match std::fs::read_to_string(path) {
        Ok(text) => Some(ContainerdFile::parse(&text, path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(DoctorError::ConfigRead {
                path: path.to_owned(),
                source,
            })
        }
    };
    Ok(FileFacts {
        path: path.to_owned(),
        content,
    })
}

/// CRI's verbose status and image filesystem; a failure is a fact (CRI off or broken).
async fn cri_facts(channel: Channel) -> CriFacts {
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let status = within(
        CALL_TIMEOUT,
        runtime.status(StatusRequest { verbose: true }),
    )
    .await;
    let mut images = ImageServiceClient::new(channel);
    let fs = within(CALL_TIMEOUT, images.image_fs_info(ImageFsInfoRequest {})).await;
    let unavailable = failure(&status).or_else(|| failure(&fs));
    let status_config = match status {
        Ok(Ok(r)) => r
            .into_inner()
            .info
            .get("config")
            .and_then(|c| StatusConfig::parse(c)),
        _ => None,
    };
    let image_fs_mountpoint = match fs {
        Ok(Ok(r)) => r
            .into_inner()
            .image_filesystems
            .into_iter()
            .next()
            .and_then(|f| f.fs_id)
            .map(|id| id.mountpoint),
        _ => None,
    };
    CriFacts {
        unavailable,
        image_fs_mountpoint,
        status_config,
    }
}

/// Whether shoald's snapshots API answers on `socket`: a Stat of a key nobody has (shoald
/// answers NOT_FOUND; nothing changes).
async fn probe_snapshotter(socket: &Path) -> Probe {
    let channel = match within(PROBE_TIMEOUT, containerd_client::connect(socket)).await {
        Err(()) => {
            return Probe::Fails(format!(
                "{}: no answer within {PROBE_TIMEOUT:?}",
                socket.display()
            ))
        }
        Ok(Err(e)) => {
            let cause =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            return Probe::Fails(format!("{}: {cause}", socket.display()));
        }
        Ok(Ok(c)) => c,
    };
    let mut client = SnapshotsClient::new(channel);
    let stat = client.stat(StatSnapshotRequest {
        snapshotter: SNAPSHOTTER_NAME.into(),
        key: "shoald-doctor-probe".into(),
    });
    match within(PROBE_TIMEOUT, stat).await {
        Err(()) => Probe::Fails(format!(
            "{}: no answer within {PROBE_TIMEOUT:?}",
            socket.display()
        )),
        Ok(Err(s)) if matches!(s.code(), Code::Unavailable | Code::Unimplemented) => {
            Probe::Fails(format!("{}: {}", socket.display(), s.message()))
        }
        Ok(_) => Probe::Answers,
    }
}

/// The hosts.toml containerd reads for `namespace`: under each root in order,
/// `<root>/<namespace>`, else `<root>/_default` (containerd's `HostDirFromRoot`).
fn hosts_file(roots: &[&str], namespace: String) -> HostsFile {
    let dir = roots.iter().find_map(|root| {
        [namespace.as_str(), DEFAULT_NAMESPACE]
            .iter()
            .map(|n| Path::new(root).join(n))
            .find(|d| d.exists())
    });
    let text = dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("hosts.toml")).ok());
    HostsFile {
        namespace,
        dir,
        text,
    }
}
