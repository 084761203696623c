//! shoal-sim: runs shoal's swarm (real planner, tracker and super-seeding) over a simulated
//! network. See docs/simulator.md.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use shoal_sim::calibrate::{self, Bench};
use shoal_sim::net::Sharing;
use shoal_sim::report::{self, Kind, Row};

#[derive(Parser)]
#[command(name = "shoal-sim", about = "shoal's swarm over a simulated network")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the predict options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Simulates runs and prints their pull times against the bounds.
    Predict {
        /// Node counts, comma-separated.
        #[arg(long, default_value = "100,1000,5000", value_delimiter = ',')]
        nodes: Vec<usize>,
        /// Image sizes in bytes, comma-separated (1073741824 = 1 GiB).
        #[arg(long, default_value = "1073741824", value_delimiter = ',')]
        bytes: Vec<u64>,
        /// Chunk size (MiB).
        #[arg(long, default_value_t = 4)]
        chunk_mib: u64,
        /// Every cap (nodes up and down, the registry side up), Mbit/s.
        #[arg(long, default_value_t = 1000.0)]
        mbit: f64,
        /// shoald's peer refresh (ms; default its default: 500, or 200 with `--sharing
        /// oldest`, where every node paces its uploads).
        #[arg(long)]
        peer_refresh_ms: Option<u64>,
        /// The tracker's `max_peers` (longest peer list; default 30).
        #[arg(long)]
        max_peers: Option<usize>,
        /// shoald's `chunks_in_flight` (chunk requests to peers in flight per node, shared by
        /// its blobs; default 8).
        #[arg(long)]
        in_flight: Option<usize>,
        /// The nodes' download cap, Mbit/s (default: --mbit).
        #[arg(long)]
        down_mbit: Option<f64>,
        /// shoald's `have_peers`: have streams per download (0: none).
        #[arg(long, default_value_t = 16)]
        have_peers: usize,
        /// shoald's `per_peer_in_flight` (chunk requests per peer; default 1).
        #[arg(long)]
        per_peer_in_flight: Option<usize>,
        /// shoald's `near_window` (chunks past the reader fetched in order; default 2).
        #[arg(long)]
        near_window: Option<usize>,
        /// shoald's `max_uploads` (chunk server upload slots; default 8).
        #[arg(long)]
        max_uploads: Option<usize>,
        /// The seeder's super-seeding deferral (ms; default 6000, `super_seed::DEFAULT_DEFER`).
        #[arg(long)]
        seeder_defer_ms: Option<u64>,
        /// The seeder's upload slots (`seed.max_uploads`; default 16).
        #[arg(long)]
        seeder_max_uploads: Option<usize>,
        /// What-if: how links are shared: equal (the default), maxmin, oldest (uploaders
        /// send to their oldest flow first, as shoald's with `upload_bytes_per_sec`; downloads
        /// max-min), seeder-oldest (max-min, the registry side's uploads oldest first).
        /// Slower than equal.
        #[arg(long, value_parser = parse_sharing, default_value = "equal")]
        sharing: Sharing,
        /// What-if: chunk requests that wait for a seeder slot (the seeder has no queue:
        /// default 0); past them, busy.
        #[arg(long)]
        seeder_queue: Option<usize>,
        /// Prints the swarm's state (links' use, requests) every this many ms (stderr; times
        /// from the simulation's start, the warm-up included)
        #[arg(long)]
        sample_ms: Option<u64>,
        /// shoald has run this long before the pulls start (s): its announcer has announced
        /// and taken the tracker's pacing, as in a cluster where shoald runs all along
        /// (0: the announcers start with the pulls)
        #[arg(long, default_value_t = 0.0)]
        warm_secs: f64,
        /// Run kinds, comma-separated: equal, hetero, rolling, dying.
        #[arg(long, default_value = "equal", value_delimiter = ',')]
        kinds: Vec<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One-way latency (ms).
        #[arg(long, default_value_t = 1.0)]
        latency_ms: f64,
        /// Writes the CDFs of the runs here (PNG).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Writes the runs' figures here (JSON).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Draws the pull-time CDFs of runs written by `predict --json` (several files, one
    /// plot) and prints their table.
    Plot {
        /// `predict --json` files.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// The plot's title.
        #[arg(long, default_value = "shoal-sim: pull-time CDFs")]
        title: String,
    },
    /// Simulates the emulated cluster of the swarm benchmark's JSON files and prints the
    /// measured and simulated figures side by side.
    Calibrate {
        /// The benchmark's JSON files (`$CARGO_TARGET_DIR/swarm-bench.json` or copies).
        #[arg(required = true)]
        bench: Vec<PathBuf>,
        /// One-way latency (ms).
        #[arg(long, default_value_t = 0.5)]
        latency_ms: f64,
        /// Time a pull spends outside the blob downloads (s; default: the emulated
        /// cluster's time to the first chunk request, docs/swarm-benchmark.md).
        #[arg(long, default_value_t = calibrate::BENCH_START)]
        overhead: f64,
        /// Seeds averaged.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// shoald's `have_peers` (0: none, as shoald before have streams).
        #[arg(long, default_value_t = 16)]
        have_peers: usize,
        /// How links are shared: equal (the simulator's model), maxmin (what TCP tends
        /// to), oldest, seeder-oldest.
        #[arg(long, value_parser = parse_sharing, default_value = "equal")]
        sharing: Sharing,
    },
}

fn parse_sharing(s: &str) -> Result<Sharing, String> {
    Sharing::parse(s).ok_or_else(|| format!("{s}: equal, maxmin, oldest or seeder-oldest"))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Predict {
            nodes,
            bytes,
            chunk_mib,
            mbit,
            down_mbit,
            have_peers,
            per_peer_in_flight,
            near_window,
            max_uploads,
            seeder_defer_ms,
            seeder_max_uploads,
            seeder_queue,
            sharing,
            sample_ms,
            warm_secs,
            peer_refresh_ms,
            in_flight,
            max_peers,
            kinds,
            seed,
            latency_ms,
            plot,
            json,
        } => {
            let kinds: Vec<Kind> = kinds
                .iter()
                .map(|k| Kind::parse(k).with_context(|| format!("unknown run kind {k:?}")))
                .collect::<Result<_>>()?;
            if chunk_mib == 0 {
                bail!("--chunk-mib must be at least 1");
            }
            let mut rows = Vec::new();
            for &kind in &kinds {
                for &f in &bytes {
                    for &n in &nodes {
                        let mut sc =
                            report::scenario(kind, n, f, chunk_mib << 20, report::mbit(mbit), seed);
                        sc.latency = latency_ms / 1e3;
                        if let Some(k) = max_peers {
                            sc.registry.max_peers = k;
                        }
                        if let Some(k) = in_flight {
                            sc.settings.in_flight = k;
                        }
                        sc.settings.have_peers = have_peers;
                        if let Some(k) = per_peer_in_flight {
                            sc.settings.per_peer_in_flight = k;
                        }
                        if let Some(k) = near_window {
                            sc.settings.near_window = k;
                        }
                        if let Some(k) = max_uploads {
                            sc.settings.max_uploads = k;
                        }
                        sc.sample_every = sample_ms.map(|ms| ms as f64 / 1e3);
                        sc.warmup = warm_secs;
                        if let Some(k) = seeder_max_uploads {
                            sc.registry.seeder_max_uploads = k;
                        }
                        sc.set_sharing(sharing);
                        if let Some(ms) = peer_refresh_ms {
                            sc.settings.peer_refresh = std::time::Duration::from_millis(ms);
                        }
                        if let Some(k) = seeder_queue {
                            sc.registry.seeder_queue = k;
                        }
                        if let Some(ms) = seeder_defer_ms {
                            sc.registry.seeder_defer = std::time::Duration::from_millis(ms);
                        }
                        if let Some(d) = down_mbit {
                            for node in &mut sc.nodes {
                                node.down = report::mbit(d);
                            }
                        }
                        let started = Instant::now();
                        let out = shoal_sim::run(&sc)?;
                        let row = Row::new(kind.name(), &sc, &out, started.elapsed().as_secs_f64());
                        if !out.samples.is_empty() {
                            eprintln!("{}", report::samples(&out.samples));
                        }
                        eprintln!(
                            "{} N={n} F={f}: p50 {:.2}s p99 {:.2}s max {:.2}s ({} done, {} died, {} failed; {} events, busy {} (seeder {}, {} waited), not held {}, transport {}, overdue {}; registry side's last byte at {:.2}s, the seeder sent {:.3} F ({} lost chunks again) and the registry by Range {:.3} F; have streams {} opened, {} refused, {} lines; {} announces, {} paced; {} peer lists ({} within the pacing for starved downloads), {} reused; {:.1}s)",
                            kind.name(),
                            row.p(50.0),
                            row.p(99.0),
                            row.p(100.0),
                            row.finished(),
                            out.died,
                            out.failed,
                            out.events,
                            out.busy,
                            out.seeder_busy,
                            out.seeder_waited,
                            out.not_held,
                            out.transport,
                            out.overdue,
                            out.registry_last,
                            out.seeder_bytes / sc.image_bytes() as f64,
                            out.seeder_lost,
                            out.range_bytes / sc.image_bytes() as f64,
                            out.have_opened,
                            out.have_refused,
                            out.have_lines,
                            out.announces,
                            out.paced_announces,
                            out.lists,
                            out.fresh_lists,
                            out.reused_lists,
                            row.wall_secs
                        );
                        rows.push(row);
                    }
                }
            }
            println!(
                "caps {mbit} Mbit/s, chunks {chunk_mib} MiB, latency {latency_ms} ms, seed {seed}, have_peers {have_peers}"
            );
            print!("{}", report::table(&rows));
            if let Some(path) = json {
                let out: Vec<serde_json::Value> = rows.iter().map(Row::to_json).collect();
                std::fs::write(&path, serde_json::to_vec_pretty(&out)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = plot {
                let title = format!(
                    "shoal-sim: pull-time CDFs ({mbit} Mbit/s caps, {chunk_mib} MiB chunks)"
                );
                shoal_sim::plot::cdf_png(&path, &title, &rows)?;
                println!("plot: {}", path.display());
            }
        }
        Command::Plot { runs, out, title } => {
            let mut rows: Vec<Row> = Vec::new();
            for path in &runs {
                let text =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let more: Vec<Row> = serde_json::from_slice(&text).with_context(|| {
                    format!("{}: not the JSON of predict --json", path.display())
                })?;
                rows.extend(more);
            }
            print!("{}", report::table(&rows));
            shoal_sim::plot::cdf_png(&out, &title, &rows)?;
            println!("plot: {}", out.display());
        }
        Command::Calibrate {
            bench,
            latency_ms,
            overhead,
            seeds,
            have_peers,
            sharing,
        } => {
            let twin = calibrate::Twin {
                latency: latency_ms / 1e3,
                overhead,
                seeds,
                have_peers,
                sharing,
            };
            let mut rows = Vec::new();
            for path in &bench {
                let b = Bench::read(path)?;
                rows.extend(calibrate::compare_all(&b, &twin)?);
            }
            println!(
                "measured (emulated cluster) against simulated; latency {latency_ms} ms, pull overhead {overhead} s, {seeds} seeds, have_peers {have_peers}, sharing {sharing:?}"
            );
            print!("{}", calibrate::table(&rows));
        }
    }
    Ok(())
}
