//! `shoal-registry-ext`: the registry side of shoal.

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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
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
