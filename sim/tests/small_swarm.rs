//! A small swarm (N = 50) through the real planner and tracker, with have streams (shoald's
//! default `have_peers`) and shoald's and the seeder's default upload slots: it finishes,
//! never beats the fluid bound, sends each byte from the registry side once, is the same for
//! the same seed, and does not get slower than today's figures. The aims against the chunked
//! bound (p50 <= 1.1x, p99 <= 1.3x) are not met at this size (p50 about 1.35x: at 256 MiB the
//! first second, before the seeder's first chunks arrive, weighs a third of F/u; see
//! docs/simulator.md "Findings"), so this test holds today's figures as a ceiling; tighten
//! it when the swarm gets nearer the aims.

use shoal_p2p::swarm::{DEFAULT_PEER_REFRESH, PACED_PEER_REFRESH};
use shoal_sim::net::Sharing;
use shoal_sim::report::{self, Kind, Row};
use shoal_sim::{percentile, run};

const MIB: u64 = 1 << 20;

#[test]
fn fifty_nodes_finish_never_beat_the_bound_and_hold_todays_figures() {
    // 50 nodes at 1 Gbit/s, 256 MiB in 4 MiB chunks, have streams on (the default).
    let sc = report::scenario(Kind::Equal, 50, 256 * MIB, 4 * MIB, report::mbit(1000.0), 7);
    assert_eq!(sc.settings.have_peers, 16, "shoald's default");
    let out = run(&sc).expect("simulation");
    let row = Row::new("equal", &sc, &out, 0.0);
    assert_eq!(row.finished(), 50, "every node finishes: {out:?}");
    assert_eq!(out.failed, 0);
    assert!(
        out.have_lines > 0 && out.have_refused == 0,
        "the nodes follow each other through have streams: {out:?}"
    );
    let (fluid, chunked) = (sc.fluid_bound(), sc.chunked_bound());
    let t = out.sorted_times();
    assert!(
        t[0] >= fluid,
        "the fastest pull {:.3}s beats the fluid bound {fluid:.3}s",
        t[0]
    );
    let (p50, p99) = (percentile(&t, 50.0), percentile(&t, 99.0));
    // Today's figures (seeds 1 to 8: p50 1.32-1.37x, p99 1.38-1.40x) with a margin: a
    // regression fails here (with a busy node left alone 500 ms instead of 100 ms: p50
    // 1.43-1.45x, p99 1.49-1.52x; before the seeder was in every peer list and a seeder's
    // refusal let nodes holding the chunk be asked at once: p50 1.46-1.57x, p99
    // 1.58-1.66x; with 16 upload slots per node and 2 requests per peer, p50 1.75-1.82x).
    assert!(
        p50 <= 1.42 * chunked,
        "p50 {p50:.3}s > 1.42 x {chunked:.3}s"
    );
    assert!(
        p99 <= 1.46 * chunked,
        "p99 {p99:.3}s > 1.46 x {chunked:.3}s"
    );
    let reg = out.registry_bytes() / sc.image_bytes() as f64;
    assert!(
        (0.99..1.05).contains(&reg),
        "the registry side sent {reg:.3} F"
    );
}

#[test]
fn have_streams_make_the_pull_faster_and_runs_repeat_for_a_seed() {
    // 30 nodes, 128 MiB: with streams against without (the tracker's lists only): 2.00 s
    // against 2.62 s (p50) today.
    let sc = report::scenario(Kind::Equal, 30, 128 * MIB, 4 * MIB, report::mbit(1000.0), 5);
    let with = run(&sc).expect("simulation");
    let mut off = sc.clone();
    off.settings.have_peers = 0;
    let without = run(&off).expect("simulation");
    assert_eq!(without.have_lines, 0);
    let p50 = |o: &shoal_sim::Outcome| percentile(&o.sorted_times(), 50.0);
    assert!(
        p50(&with) < 0.9 * p50(&without),
        "p50 {:.3}s with have streams, {:.3}s without",
        p50(&with),
        p50(&without)
    );
    // Deterministic for a seed.
    let again = run(&sc).expect("simulation");
    assert_eq!(again.sorted_times(), with.sorted_times());
    assert_eq!(again.events, with.events);
}

#[test]
fn paced_uploads_take_shoalds_faster_peer_refresh_and_pull_faster_with_it() {
    // 50 nodes, 256 MiB, every node pacing its uploads at its link's rate, oldest first
    // (shoald's `upload_bytes_per_sec`): shoald then asks for peer lists every 200 ms
    // instead of 500 ms. Today (seed 7), p50 / p99 of the chunked bound: paced with 200 ms
    // 1.252x / 1.289x, paced with 500 ms 1.365x / 1.421x, not paced 1.331x / 1.376x (seeds
    // 1 to 4: 1.248-1.254x / 1.279-1.293x, 1.365-1.382x / 1.421-1.495x and 1.321-1.358x /
    // 1.370-1.419x).
    let base = report::scenario(Kind::Equal, 50, 256 * MIB, 4 * MIB, report::mbit(1000.0), 7);
    let mut paced = base.clone();
    paced.set_sharing(Sharing::OldestFirst);
    assert_eq!(paced.settings.peer_refresh, PACED_PEER_REFRESH);
    assert_eq!(base.settings.peer_refresh, DEFAULT_PEER_REFRESH);
    let mut paced_500 = paced.clone();
    paced_500.settings.peer_refresh = DEFAULT_PEER_REFRESH;
    let chunked = base.chunked_bound();
    let figures = |sc: &shoal_sim::Scenario| {
        let out = run(sc).expect("simulation");
        let t = out.sorted_times();
        assert_eq!(t.len(), 50, "every node finishes: {out:?}");
        let reg = out.registry_bytes() / sc.image_bytes() as f64;
        assert!(
            (0.99..1.05).contains(&reg),
            "the registry side sent {reg:.3} F"
        );
        (
            percentile(&t, 50.0) / chunked,
            percentile(&t, 99.0) / chunked,
        )
    };
    let (fast, slow, unpaced) = (figures(&paced), figures(&paced_500), figures(&base));
    for (name, other) in [("paced at 500 ms", slow), ("not paced", unpaced)] {
        assert!(
            fast.0 < 0.96 * other.0 && fast.1 < 0.96 * other.1,
            "paced with the 200 ms refresh {fast:.3?}, {name} {other:.3?} (p50, p99 / chunked)"
        );
    }
    assert!(
        fast.0 <= 1.30 && fast.1 <= 1.33,
        "paced with the 200 ms refresh {fast:.3?} (p50, p99 / chunked)"
    );
}

#[test]
fn a_node_dying_mid_pull_does_not_stop_the_others() {
    let sc = report::scenario(Kind::Dying, 40, 64 * MIB, 4 * MIB, report::mbit(1000.0), 3);
    assert_eq!(sc.nodes.iter().filter(|n| n.dies.is_some()).count(), 2);
    let out = run(&sc).expect("simulation");
    assert_eq!(out.died, 2);
    assert_eq!(out.failed, 0);
    assert_eq!(out.sorted_times().len(), 38, "{out:?}");
}

#[test]
fn requests_queued_at_the_seeder_wait_for_its_slots_instead_of_being_refused() {
    // 20 nodes, 2 seeder slots: without a queue most first requests are answered busy; with
    // room for every node's one seeder request none is, each waits its turn, and every chunk
    // still leaves the registry side once.
    let mut sc = report::scenario(Kind::Equal, 20, 64 * MIB, 4 * MIB, report::mbit(1000.0), 2);
    sc.registry.seeder_max_uploads = 2;
    assert_eq!(sc.registry.seeder_queue, 0, "the seeder has no queue");
    let refused = run(&sc).expect("simulation");
    assert!(
        refused.seeder_busy > 0 && refused.seeder_waited == 0,
        "{refused:?}"
    );
    sc.registry.seeder_queue = 20;
    let queued = run(&sc).expect("simulation");
    assert_eq!(queued.seeder_busy, 0, "{queued:?}");
    assert!(queued.seeder_waited > 0);
    for out in [&refused, &queued] {
        assert_eq!(out.sorted_times().len(), 20, "{out:?}");
        let reg = out.registry_bytes() / sc.image_bytes() as f64;
        assert!(
            (0.99..1.05).contains(&reg),
            "the registry side sent {reg:.3} F"
        );
    }
}

#[test]
fn nodes_joining_with_short_peer_lists_take_no_chunk_from_the_registry_itself() {
    // 60 nodes joining over 30 s, 256 MiB at 100 Mbit/s (pulls of about 21 s overlap),
    // peer lists of 4. When the seeder had to compete for a place in the lists, a node
    // that never drew it took every chunk its listed peers lacked from the registry by HTTP
    // Range (no slots, no super-seeding): 3.81 F from the registry side, 755 MB of it by
    // Range, p50 67 s. With the seeder in every list: no Range request, p50 about 23 s; the
    // seeder sends chunks again that nodes cannot find in lists this short (1.41 F).
    let mut sc = report::scenario(
        Kind::Rolling,
        60,
        256 * MIB,
        4 * MIB,
        report::mbit(100.0),
        4,
    );
    sc.registry.max_peers = 4;
    let out = run(&sc).expect("simulation");
    let t = out.sorted_times();
    assert_eq!(t.len(), 60, "{out:?}");
    let reg = out.registry_bytes() / sc.image_bytes() as f64;
    assert_eq!(
        out.range_bytes,
        0.0,
        "{:.1} MB by Range ({reg:.3} F from the registry side)",
        out.range_bytes / 1e6
    );
    assert!(reg < 2.0, "the registry side sent {reg:.3} F");
    let (p50, fluid) = (percentile(&t, 50.0), sc.fluid_bound());
    assert!(p50 <= 1.5 * fluid, "p50 {p50:.2}s against F/u {fluid:.2}s");
}

#[test]
fn a_nodes_layers_share_its_chunk_requests() {
    // 20 nodes pulling an image of four layers, all at once (shoald's `unpack.concurrency`):
    // the node's 8 requests are shared by its layers, each sure of one (at most 8 + 3); with
    // a limit per layer a node kept up to 32 in flight.
    let mut sc = report::scenario(Kind::Equal, 20, 64 * MIB, MIB, report::mbit(100.0), 3);
    sc.blobs = vec![16 * MIB; 4];
    let limit = sc.settings.in_flight;
    assert_eq!(
        (limit, sc.settings.layer_concurrency),
        (8, 4),
        "shoald's defaults"
    );
    let out = run(&sc).expect("simulation");
    assert_eq!(out.sorted_times().len(), 20, "every node finishes: {out:?}");
    assert!(
        (limit..=limit + 3).contains(&out.max_peer_requests),
        "a node had {} requests in flight at once, limit {limit}",
        out.max_peer_requests
    );
}

#[test]
fn a_warmed_up_swarm_counts_its_pulls_and_the_registry_side_from_the_pulls_start() {
    // 20 nodes, 64 MiB: shoald running 3 s before the pulls (its announcer has announced).
    let sc = report::scenario(Kind::Equal, 20, 64 * MIB, 4 * MIB, report::mbit(1000.0), 3);
    let cold = run(&sc).expect("simulation");
    let mut warm_sc = sc.clone();
    warm_sc.warmup = 3.0;
    let warm = run(&warm_sc).expect("simulation");
    let (cold_t, warm_t) = (cold.sorted_times(), warm.sorted_times());
    assert_eq!(warm_t.len(), 20, "every node finishes: {warm:?}");
    assert!(
        warm_t[0] >= sc.fluid_bound(),
        "the fastest warm pull {:.3}s beats the fluid bound {:.3}s",
        warm_t[0],
        sc.fluid_bound()
    );
    // The announcers' phases differ, so the figures do, by far less than the warm-up.
    let (c, w) = (percentile(&cold_t, 50.0), percentile(&warm_t, 50.0));
    assert!((w - c).abs() < 1.0, "p50 cold {c:.3}s, warm {w:.3}s");
    assert!(
        (warm.registry_last - cold.registry_last).abs() < 1.0,
        "the registry side's last byte: cold {:.3}s, warm {:.3}s",
        cold.registry_last,
        warm.registry_last
    );
    let mut bad = sc.clone();
    bad.warmup = -1.0;
    assert!(run(&bad).is_err(), "a negative warm-up is refused");
}

#[test]
fn a_warmed_up_nodes_first_announce_of_its_pull_does_not_wait_out_the_announcers_pause() {
    // 50 nodes whose announcers have run 3 s: about a fifth are in their 200 ms pause after a
    // round when the pulls start. The first chunk requests wake the announcer within it, as
    // they wake shoald's (`Swarm::run_announcer`).
    let mut sc = report::scenario(Kind::Equal, 50, 64 * MIB, 4 * MIB, report::mbit(1000.0), 4);
    sc.warmup = 3.0;
    let out = run(&sc).expect("simulation");
    assert_eq!(out.sorted_times().len(), 50, "every node finishes: {out:?}");
    // A peer list's round trip and a plan; waiting out the pause would take up to 200 ms.
    assert!(
        out.first_announce_wait < 0.05,
        "a pull waited {:.3}s for its first announce",
        out.first_announce_wait
    );
}
