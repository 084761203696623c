//! `shoal-registry-ext`: the registry side of shoal.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shoal_p2p::chunk::DEFAULT_CHUNK_SIZE;
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{ClientConfig, Platform, RegistryClient};

#[derive(Parser)]
#[command(
    name = "shoal-registry-ext",
    version,
    about = "shoal's registry extension"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the tracker, the chunk-manifest service and the first seeder (one mutual-TLS
    /// listener), plus /metrics, until SIGTERM or SIGINT.
    Serve {
        /// The configuration file (see registry-ext.toml.example).
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// The IP:port peers dial for the seeder's chunks, instead of the configuration's
        /// `advertise` (e.g. the pod's IP on Kubernetes: `--advertise $(POD_IP):7080`).
        #[arg(long, value_name = "IP:PORT", env = "SHOAL_ADVERTISE")]
        advertise: Option<std::net::SocketAddr>,
    },
    /// Print the chunk manifest (JSON, one line per blob) of every layer of IMAGE, made from
    /// the layer blobs read from the registry with their digests verified.
    ChunkManifest {
        image: String,
        /// Chunk size in bytes.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u64,
        /// Platform to pick from a multi-platform index; default: this host.
        #[arg(long)]
        platform: Option<String>,
        /// Talk plain HTTP to this registry host (repeatable; for registries on loopback).
        #[arg(long = "plain-http", value_name = "HOST")]
        plain_http: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter(
            std::env::var("SHOAL_LOG").ok(),
        )))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { config, advertise } => serve(&config, advertise).await,
        Command::ChunkManifest {
            image,
            chunk_size,
            platform,
            plain_http,
        } => {
            let mut config = ClientConfig::default();
            for host in plain_http {
                config.hosts.entry(host).or_default().plain_http = true;
            }
            let reference: ImageReference = image
                .parse()
                .with_context(|| format!("image reference {image:?}"))?;
            let platform = match platform {
                Some(p) => p.parse().with_context(|| format!("platform {p:?}"))?,
                None => Platform::host(),
            };
            let client = RegistryClient::new(config)?;
            let resolved = client.resolve(&reference, &platform).await?;
            for layer in &resolved.layers {
                let manifest = shoal_registry_ext::chunk_manifest(
                    &client,
                    &reference,
                    &layer.digest,
                    chunk_size,
                )
                .await?;
                manifest.validate()?;
                println!("{}", String::from_utf8_lossy(&manifest.to_json()));
            }
            Ok(())
        }
    }
}

async fn serve(path: &std::path::Path, advertise: Option<std::net::SocketAddr>) -> Result<()> {
    let config = shoal_registry_ext::Config::load_advertising(path, advertise)?;
    // Unusable TLS files fail here, before anything is said to be listening.
    shoal_p2p::tls::Transport::load(config.tls.as_ref(), config.insecure_plaintext)?;
    let api = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (metrics)"))?,
        ),
        None => None,
    };
    let notify = match config.notifications.enabled {
        true => {
            let addr = config.notifications.listen;
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening on {addr} (notifications)"))?,
            )
        }
        false => None,
    };
    if let Some(n) = &notify {
        eprintln!("push hook listening on {}", n.local_addr()?);
    }
    let preheat_admin = match config
        .preheat
        .admin_listen
        .filter(|_| config.preheat.enabled)
    {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (preheat admin)"))?,
        ),
        None => None,
    };
    let api_addr = api.local_addr()?;
    match metrics.as_ref().map(|m| m.local_addr()).transpose()? {
        Some(m) => eprintln!("listening on {api_addr} (metrics on {m})"),
        None => eprintln!("listening on {api_addr}"),
    }
    let listeners = shoal_registry_ext::Listeners {
        api,
        metrics,
        notify,
        preheat_admin,
    };
    shoal_registry_ext::serve(config, listeners, stop_signal()?).await?;
    Ok(())
}

/// The log filter: `SHOAL_LOG` (default `warn`), with the BitTorrent session's crates
/// (`librqbit*`, which log every peer connection at info) kept at `warn` unless `SHOAL_LOG`
/// names them.
fn log_filter(shoal_log: Option<String>) -> String {
    let filter = shoal_log.unwrap_or_else(|| "warn".into());
    if filter.contains("rqbit") {
        filter
    } else {
        format!("{filter},librqbit=warn")
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}
