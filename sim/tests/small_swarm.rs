//! A small swarm (N = 50) through the real planner and tracker: it finishes, never beats
//! the fluid bound, sends each byte from the registry side about once, is the same for the
//! same seed, and does not get slower than today's figures. The aims against the chunked
//! bound (p50 <= 1.1x, p99 <= 1.3x) are not met today (p50 about 2.0x: the seeder idles
//! while the nodes' views of each other are up to a peer refresh and an announce old; see
//! docs/simulator.md "Findings"), so this test holds today's figures as a ceiling; tighten it
//! to the aims when the planner meets them.

use shoal_sim::report::{self, Kind, Row};
use shoal_sim::{percentile, run};

const MIB: u64 = 1 << 20;

#[test]
fn fifty_nodes_finish_never_beat_the_bound_and_hold_todays_figures() {
    // 50 nodes at 1 Gbit/s, 256 MiB in 4 MiB chunks.
    let sc = report::scenario(Kind::Equal, 50, 256 * MIB, 4 * MIB, report::mbit(1000.0), 7);
    let out = run(&sc).expect("simulation");
    let row = Row::new("equal", &sc, &out, 0.0);
    assert_eq!(row.finished(), 50, "every node finishes: {out:?}");
    assert_eq!(out.failed, 0);
    let (fluid, chunked) = (sc.fluid_bound(), sc.chunked_bound());
    let t = out.sorted_times();
    assert!(
        t[0] >= fluid,
        "the fastest pull {:.3}s beats the fluid bound {fluid:.3}s",
        t[0]
    );
    let (p50, p99) = (percentile(&t, 50.0), percentile(&t, 99.0));
    // Today's figures (p50 2.04x, p99 2.08x) with a margin: a regression fails here.
    assert!(p50 <= 2.3 * chunked, "p50 {p50:.3}s > 2.3 x {chunked:.3}s");
    assert!(p99 <= 2.5 * chunked, "p99 {p99:.3}s > 2.5 x {chunked:.3}s");
    let reg = out.registry_bytes() / sc.image_bytes() as f64;
    assert!(
        (0.99..1.3).contains(&reg),
        "the registry side sent {reg:.3} F"
    );
    // Deterministic for a seed.
    let again = run(&sc).expect("simulation");
    assert_eq!(again.sorted_times(), t);
    assert_eq!(again.events, out.events);
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
