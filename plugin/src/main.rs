//! `shoald`: the shoal node daemon and its command-line tools.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use shoal_p2p::reference::ImageReference;
use shoal_p2p::registry::{Platform, RegistryClient};
use shoal_plugin::config::Config;
use shoal_plugin::containerd::config as containerd_config;
use shoal_plugin::containerd::ContainerdVersion;
use shoal_plugin::image::{unpack_image, LayerReport};
use shoal_plugin::preheat::cli;
use shoal_plugin::report::human_bytes;

#[derive(Parser)]
#[command(name = "shoald", version, about = "shoal node daemon")]
struct Cli {
    /// shoald's configuration file (TOML); defaults apply without one.
    #[arg(long, global = true, env = "SHOALD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream every layer of IMAGE from its registry through the unpacker into DEST, one
    /// overlayfs-format directory per layer, and print each layer's time and throughput.
    Unpack {
        /// Image reference, e.g. 127.0.0.1:5000/app:v1 or registry/name@sha256:...
        image: String,
        /// Directory to unpack into (one subdirectory per layer).
        #[arg(long)]
        dest: PathBuf,
        /// Platform to pick from a multi-platform index (os/arch[/variant]); default: this host.
        #[arg(long)]
        platform: Option<String>,
        /// Talk plain HTTP to this registry host (repeatable); same as `plain_http = true` in
        /// the config's [registry.hosts."HOST"].
        #[arg(long = "plain-http", value_name = "HOST")]
        plain_http: Vec<String>,
        /// Layers unpacked at once (default: the config's unpack.concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Serve the overlayfs snapshotter (containerd proxy plugin) on a unix socket until
    /// SIGTERM or SIGINT.
    Snapshotter {
        /// State directory (metadata.redb, snapshots/ID/{fs,work}).
        #[arg(long, default_value = "/var/lib/shoal/snapshotter")]
        root: PathBuf,
        /// Unix socket to serve containerd's snapshots API on.
        #[arg(long, default_value = "/run/shoal/shoald.sock")]
        address: PathBuf,
    },
    /// Write containerd hosts.toml files that put shoald's registry mirror first, for every
    /// registry of the configuration and `_default`, keeping what the files already say.
    Hosts {
        /// containerd's hosts directory (its `config_path`); default: the config's
        /// mirror.hosts_dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the files instead of writing them.
        #[arg(long)]
        print: bool,
    },
    /// Write containerd's configuration for shoal: register shoald's snapshotter and set CRI's
    /// image settings for the installed containerd's version and config schema, keeping
    /// everything else the file says. Prints what it changed and why.
    ContainerdConfig {
        /// containerd's configuration file (a missing one is created, with its directory).
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        file: PathBuf,
        /// shoald's snapshotter socket to register (`shoald snapshotter --address`).
        #[arg(long, value_name = "SOCK", default_value = "/run/shoal/shoald.sock")]
        address: PathBuf,
        /// The containerd version the file is for, e.g. 2.1.9; default: what
        /// `BIN --version` says.
        #[arg(long, value_name = "V")]
        containerd_version: Option<ContainerdVersion>,
        /// The containerd binary asked for its version (a path, or a name on PATH).
        #[arg(long, value_name = "BIN", default_value = "containerd")]
        containerd: PathBuf,
        /// containerd 2.1+: have CRI pull with the client (`use_local_image_pull`) instead of
        /// the transfer service. Earlier versions always pull that way.
        #[arg(long)]
        local_pull: bool,
        /// Print the resulting file instead of writing it.
        #[arg(long)]
        print: bool,
    },
    /// Pull IMAGE through containerd's CRI (ImageService/PullImage, as kubelet does), showing
    /// containerd's downloads while it runs and the image's layers afterwards.
    Pull {
        /// Image reference, e.g. 127.0.0.1:5000/app:v1
        image: String,
        /// containerd's gRPC socket (serves CRI and containerd's own API).
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        cri_address: PathBuf,
        /// Seconds to wait for the pull.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Check, without changing anything, what the running containerd does with shoal: its
    /// version, shoal's proxy snapshotter, CRI's snapshotter and pull path, whether the cri.*
    /// labels reach shoal, the mirror in hosts.toml. One line per check (ok, warn, FAIL) with
    /// the fix below. Exit status 0 when CRI pulls use shoal, 1 when they do not, 2 when the
    /// doctor cannot tell (containerd unreachable, a config file malformed).
    Doctor {
        /// containerd's gRPC socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        containerd_address: PathBuf,
        /// containerd's config file, for what its socket does not tell.
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        containerd_config: PathBuf,
    },
    /// The running shoald's health: each component (snapshotter, remote path, swarm, mirror,
    /// preheat worker, blob cache) up, degraded, down or off and why, the swarm's trackers
    /// and peers, the cache's use, pulls in flight. Read from shoald's `GET /status` on its
    /// metrics listener. Exit status 0 when every enabled component is up, 1 when one is
    /// degraded or down, 2 when shoald cannot be reached.
    Status {
        /// shoald's metrics and status listener (IP:PORT); default: the config's [metrics]
        /// listen.
        #[arg(long, value_name = "ADDR")]
        address: Option<String>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Preheat jobs on shoal-registry-ext's coordinator: warm images onto nodes.
    Preheat {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        command: PreheatCommand,
    },
    /// The nodes registered with the preheat coordinator (up or down, labels, versions).
    Nodes {
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// How to reach the preheat coordinator: the cluster certificate of the config's
/// [swarm.tls] (its main listener), or a bearer token (its admin listener).
#[derive(clap::Args)]
struct ConnectArgs {
    /// The coordinator's URL; default: the config's [preheat] coordinator.
    #[arg(long, env = "SHOAL_COORDINATOR", global = true)]
    coordinator: Option<String>,
    /// Bearer token for the coordinator's admin listener.
    #[arg(
        long,
        env = "SHOAL_PREHEAT_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// CA certificate to check the admin listener with; default: [swarm.tls] ca.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PreheatCommand {
    /// Submit a job: --image (repeatable) on the nodes matching every --selector KEY=VALUE
    /// and named by --node, plus the per-node lists of --per-node-file ("NODE IMAGE..." lines).
    Submit {
        #[arg(long = "image")]
        images: Vec<String>,
        #[arg(long = "selector", value_name = "KEY=VALUE")]
        selector: Vec<String>,
        #[arg(long = "node")]
        nodes: Vec<String>,
        #[arg(long)]
        per_node_file: Option<PathBuf>,
        /// Follow the job until it finishes (exit status 1 if it failed).
        #[arg(long)]
        watch: bool,
    },
    /// A job's progress per node and image (exit status 1 if it failed or was cancelled).
    Status {
        job: String,
        /// Follow it until it finishes.
        #[arg(long)]
        watch: bool,
        /// Print the job's log too.
        #[arg(long)]
        log: bool,
    },
    /// Cancel a job: tasks not started are dropped, running ones stopped.
    Cancel { job: String },
    /// Every job, oldest first.
    Jobs,
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
    let cli = Cli::parse();
    if let Command::Doctor {
        containerd_address,
        containerd_config,
    } = &cli.command
    {
        // The doctor reads shoald's config itself: a bad one means "cannot tell" (status 2).
        let options = shoal_plugin::containerd::doctor::Options {
            containerd_address: containerd_address.clone(),
            containerd_config: containerd_config.clone(),
            shoald_config: cli.config.clone(),
        };
        std::process::exit(shoal_plugin::containerd::doctor::run(&options).await);
    }
    if let Command::Status { address, json } = &cli.command {
        // Unreachable, or no address to ask (a bad config), is status 2.
        let address = match address {
            Some(a) => a.clone(),
            None => match Config::load(cli.config.as_deref()) {
                Ok(config) => config.metrics.listen,
                Err(e) => {
                    eprintln!("shoald status: {e:#} (or give --address)");
                    std::process::exit(shoal_plugin::health::cli::UNREACHABLE);
                }
            },
        };
        std::process::exit(shoal_plugin::health::cli::run(&address, *json).await);
    }
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Unpack {
            image,
            dest,
            platform,
            plain_http,
            concurrency,
        } => {
            for host in plain_http {
                config.registry.hosts.entry(host).or_default().plain_http = true;
            }
            let concurrency = concurrency.unwrap_or(config.unpack.concurrency).max(1);
            unpack(config, &image, &dest, platform.as_deref(), concurrency).await
        }
        Command::Snapshotter { root, address } => {
            Ok(shoal_plugin::snapshot::run(&root, &address, &config, terminated()).await?)
        }
        Command::Hosts { dir, print } => {
            let dir = dir.unwrap_or_else(|| config.mirror.hosts_dir.clone());
            let files = shoal_plugin::mirror::hosts::write_all(&config, &dir, print)?;
            for (path, text) in files {
                if print {
                    println!("# {}\n{text}", path.display());
                } else {
                    println!("{}", path.display());
                }
            }
            if !config.mirror.enabled && !print {
                eprintln!("note: [mirror] enabled = false in the configuration: containerd will skip the mirror until it is enabled");
            }
            Ok(())
        }
        Command::ContainerdConfig {
            file,
            address,
            containerd_version,
            containerd,
            local_pull,
            print,
        } => {
            let version = match containerd_version {
                Some(v) => v,
                None => containerd_config::file::detect_version(&containerd)?,
            };
            let opts = containerd_config::Options {
                version,
                shoald_socket: address,
                pull_path: match local_pull {
                    true => containerd_config::PullPath::Local,
                    false => containerd_config::PullPath::Transfer,
                },
                platform: containerd_config::host_platform(),
            };
            write_containerd_config(&file, &opts, print)
        }
        Command::Pull {
            image,
            cri_address,
            timeout,
        } => Ok(shoal_plugin::cri::pull_command(
            &cri_address,
            &image,
            std::time::Duration::from_secs(timeout),
        )
        .await?),
        Command::Doctor { .. } | Command::Status { .. } => {
            unreachable!("handled before the config is loaded")
        }
        Command::Preheat { connect, command } => preheat(&config, connect, command).await,
        Command::Nodes { connect } => {
            let client = preheat_client(&config, connect)?;
            let nodes = client.nodes().await?;
            print!("{}", cli::render_nodes(&nodes, now_ms()));
            Ok(())
        }
    }
}

/// `shoald containerd-config`: [`containerd_config::apply`] to `file`, written atomically
/// (or printed), with the notes and what to do next.
fn write_containerd_config(
    file: &std::path::Path,
    opts: &containerd_config::Options,
    print: bool,
) -> Result<()> {
    let existing = containerd_config::file::read(file)?;
    let applied = containerd_config::apply(existing.as_deref().unwrap_or_default(), opts)
        .with_context(|| format!("{}: nothing written", file.display()))?;
    // With --print, stdout is the file alone.
    let say = |line: String| match print {
        true => eprintln!("{line}"),
        false => println!("{line}"),
    };
    let v = opts.version;
    say(format!(
        "containerd {v}: config version {}, CRI pulls {}",
        v.schema().number(),
        match (v.cri_pulls_via_transfer(), opts.pull_path) {
            (true, containerd_config::PullPath::Transfer) => "through the transfer service",
            (true, containerd_config::PullPath::Local) => "with the client (use_local_image_pull)",
            (false, _) => "with the client",
        }
    ));
    if existing.is_none() {
        say(format!(
            "note: {} does not exist: starting from containerd's defaults",
            file.display()
        ));
    }
    for note in &applied.notes {
        say(format!("note: {note}"));
    }
    if print {
        print!("{}", applied.text);
        return Ok(());
    }
    let restart = "restart containerd to load it (systemctl restart containerd), then check \
                   what it does with `shoald doctor`";
    if applied.changed || existing.is_none() {
        containerd_config::file::write_atomic(file, &applied.text)?;
        println!("written {}", file.display());
        println!("{restart}");
    } else {
        println!("unchanged {}", file.display());
        println!("if containerd has not been restarted since it was written: {restart}");
    }
    Ok(())
}

fn preheat_client(config: &Config, c: ConnectArgs) -> Result<shoal_p2p::preheat::PreheatClient> {
    let connect = cli::Connect {
        coordinator: c.coordinator,
        token: c.token,
        ca: c.ca,
    };
    Ok(cli::client(&connect, config)?)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn preheat(config: &Config, connect: ConnectArgs, command: PreheatCommand) -> Result<()> {
    use shoal_p2p::preheat::proto::JobState;
    let client = preheat_client(config, connect)?;
    let every = std::time::Duration::from_millis(500);
    let finished = |job: &shoal_p2p::preheat::proto::JobStatus| -> Result<()> {
        match job.state {
            JobState::Done | JobState::Running => Ok(()),
            state => anyhow::bail!("job {} {state}", job.id),
        }
    };
    match command {
        PreheatCommand::Submit {
            images,
            selector,
            nodes,
            per_node_file,
            watch,
        } => {
            let spec = cli::job_spec(&images, &selector, &nodes, per_node_file.as_deref())?;
            let job = client.submit(&spec).await?;
            println!("job {} submitted", job.id);
            let job = match watch {
                true => cli::watch(&client, &job.id, every).await?,
                false => {
                    print!("{}", cli::render_job(&job));
                    job
                }
            };
            finished(&job)
        }
        PreheatCommand::Status { job, watch, log } => {
            let job = match watch {
                true => cli::watch(&client, &job, every).await?,
                false => {
                    let job = client.job(&job).await?;
                    print!("{}", cli::render_job(&job));
                    job
                }
            };
            if log {
                print!("log:\n{}", cli::render_log(&job));
            }
            finished(&job)
        }
        PreheatCommand::Cancel { job } => {
            let job = client.cancel(&job).await?;
            print!("{}", cli::render_job(&job));
            Ok(())
        }
        PreheatCommand::Jobs => {
            for j in client.jobs().await?.jobs {
                println!(
                    "{:>6}  {:<9}  {} tasks: {} done, {} failed",
                    j.id,
                    j.state.to_string(),
                    j.tasks,
                    j.done,
                    j.failed
                );
            }
            Ok(())
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn unpack(
    config: Config,
    image: &str,
    dest: &std::path::Path,
    platform: Option<&str>,
    concurrency: usize,
) -> Result<()> {
    let reference: ImageReference = image
        .parse()
        .with_context(|| format!("image reference {image:?}"))?;
    let platform = match platform {
        Some(p) => p.parse().with_context(|| format!("platform {p:?}"))?,
        None => Platform::host(),
    };
    let client = RegistryClient::new(config.registry)?;
    let start = Instant::now();
    let resolved = client.resolve(&reference, &platform).await?;
    println!(
        "{reference}: manifest {} ({} layers, resolved in {:.0} ms)",
        resolved.manifest_digest,
        resolved.layers.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "{:>5}  {:<19}  {:>11}  {:>13}  {:>8}  {:>9}  {:>8}",
        "layer", "digest", "compressed", "uncompressed", "entries", "time", "MB/s"
    );
    let reports = unpack_image(&client, &resolved, dest, concurrency, print_layer).await?;
    let wall = start.elapsed();
    let compressed: u64 = reports.iter().map(|r| r.stats.compressed_bytes).sum();
    let uncompressed: u64 = reports.iter().map(|r| r.stats.uncompressed_bytes).sum();
    println!(
        "total: {} layers, {} compressed, {} uncompressed in {:.2} s ({:.1} MB/s compressed) -> {}",
        reports.len(),
        human_bytes(compressed),
        human_bytes(uncompressed),
        wall.as_secs_f64(),
        compressed as f64 / wall.as_secs_f64().max(1e-9) / 1e6,
        dest.display()
    );
    Ok(())
}

fn print_layer(r: &LayerReport) {
    println!(
        "{:>5}  {:<19}  {:>11}  {:>13}  {:>8}  {:>7.0}ms  {:>8.1}",
        r.index,
        format!("{}…", &r.digest.to_string()[..18]),
        human_bytes(r.stats.compressed_bytes),
        human_bytes(r.stats.uncompressed_bytes),
        r.stats.entries,
        r.elapsed.as_secs_f64() * 1e3,
        r.throughput() / 1e6
    );
}
