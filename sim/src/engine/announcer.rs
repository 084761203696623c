//! shoald's announcer (`Swarm::run_announcer`) of each node: announce (through the tracker's
//! pacing), pause 200 ms, then wait for a wake-up or the rest of the announce interval.

use shoal_p2p::tracker::proto::UploadStats;

use super::{Announced, Event, Sim, ANNOUNCE_PAUSE};

impl Sim<'_> {
    /// Node `i`'s announcer wakes (`generation`: a stale wake-up is ignored).
    pub(super) fn announce_wake(&mut self, i: usize, generation: u64) {
        let node = &mut self.nodes[i];
        if !node.alive || generation != node.announce_gen {
            return;
        }
        if node.waiting || node.notified {
            self.announce(i);
        } else {
            // The pause is over: wait for a wake-up or the rest of the interval.
            node.waiting = true;
            node.announce_gen += 1;
            let rest = self.sc.settings.announce_interval.as_secs_f64() - ANNOUNCE_PAUSE;
            let generation = node.announce_gen;
            self.at(self.now + rest.max(0.0), Event::AnnounceWake(i, generation));
        }
    }

    /// Wakes node `i`'s announcer.
    pub(super) fn notify(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.waiting {
            node.announce_gen += 1;
            let generation = node.announce_gen;
            self.at(self.now, Event::AnnounceWake(i, generation));
            // Runs now; `waiting` makes it announce.
        } else {
            node.notified = true;
        }
    }

    /// Node `i` announces its state now (the tracker hears it one latency later; a round
    /// within the tracker's pacing skips it), then pauses.
    pub(super) fn announce(&mut self, i: usize) {
        let blobs: Vec<_> = self.nodes[i]
            .downloads
            .iter()
            .enumerate()
            .filter_map(|(k, d)| {
                let have = d.have.clone()?;
                Some((k, have, d.fetching.clone()))
            })
            .collect();
        let states = super::blob_states(&blobs);
        let paced = self.tracker.paced(i, self.now, &states);
        let names_one = crate::adapter::announced(&states).next().is_some();
        drop(states);
        let rate = self.net.upload_rate(i);
        let node = &mut self.nodes[i];
        node.upload_peak = node.upload_peak.max(rate);
        let upload = UploadStats {
            capacity_bytes_per_sec: node.upload_peak as u64,
            rate_bytes_per_sec: rate as u64,
            active: self.net.uploads(i) as u32,
            max: self.sc.settings.max_uploads as u32,
        };
        let blobs = if paced { Vec::new() } else { blobs };
        node.waiting = false;
        node.notified = false;
        node.announce_gen += 1;
        let generation = node.announce_gen;
        if !paced && node.pulling && !node.announced_pull && names_one {
            node.announced_pull = true;
            let wait = self.now - (self.sc.warmup + self.sc.nodes[i].start);
            self.out.first_announce_wait = self.out.first_announce_wait.max(wait);
        }
        if !paced {
            let sent = self.now;
            self.at(
                self.now + self.sc.latency,
                Event::Announced(
                    i,
                    Box::new(Announced {
                        sent,
                        upload,
                        blobs,
                    }),
                ),
            );
        }
        self.at(
            self.now + ANNOUNCE_PAUSE,
            Event::AnnounceWake(i, generation),
        );
    }

    pub(super) fn seeder_stats(&self) -> UploadStats {
        UploadStats {
            capacity_bytes_per_sec: self.seeder_peak as u64,
            rate_bytes_per_sec: self.net.upload_rate(self.reg) as u64,
            active: self.seeder_uploads as u32,
            max: self.sc.registry.seeder_max_uploads as u32,
        }
    }
}
