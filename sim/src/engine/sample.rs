//! The swarm's state sampled every `Scenario::sample_every` (`predict --sample-ms`): how
//! much of their links the nodes and the registry side use, and the requests in flight.

use super::{Event, Sim};

/// The swarm's state at one moment (nodes pulling, not finished).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// When (s).
    pub at: f64,
    /// Nodes pulling now.
    pub pulling: usize,
    /// Mean fraction of the image they hold.
    pub held: f64,
    /// What all nodes upload, over the sum of their upload caps (finished nodes included).
    pub upload_use: f64,
    /// What the pulling nodes download, over the sum of their download caps.
    pub download_use: f64,
    /// What the registry side uploads, over its cap.
    pub registry_use: f64,
    /// Nodes (all) that upload nothing.
    pub idle_uploaders: usize,
    /// Pulling nodes' requests in flight, per node: all, and those with a flow.
    pub requests: f64,
    pub flowing: f64,
    /// Uploads per uploading node.
    pub uploads_per_uploader: f64,
}

impl Sim<'_> {
    /// Samples the swarm's state (see [`Sample`]).
    pub(super) fn sample(&mut self) {
        let mut s = Sample {
            at: self.now,
            ..Sample::default()
        };
        let (mut up, mut up_cap, mut down, mut down_cap) = (0.0, 0.0, 0.0, 0.0);
        let (mut uploaders, mut uploads) = (0usize, 0usize);
        let total: f64 = self.chunks.iter().map(|&c| c as f64).sum();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.alive {
                continue;
            }
            let rate = self.net.upload_rate(i);
            up += rate;
            up_cap += self.sc.nodes[i].up;
            let k = self.net.uploads(i);
            if k == 0 {
                s.idle_uploaders += 1;
            } else {
                uploaders += 1;
                uploads += k;
            }
            if !node.pulling || node.finished {
                continue;
            }
            s.pulling += 1;
            down += self.net.download_rate(i);
            down_cap += self.sc.nodes[i].down;
            let held: u32 = node
                .downloads
                .iter()
                .map(|d| d.have.as_ref().map_or(0, |h| h.count()))
                .sum();
            s.held += held as f64 / total;
            for d in &node.downloads {
                s.requests += d.tasks.len() as f64;
                s.flowing += d.tasks.values().filter(|t| t.flow.is_some()).count() as f64;
            }
        }
        if s.pulling > 0 {
            let p = s.pulling as f64;
            s.held /= p;
            s.requests /= p;
            s.flowing /= p;
        }
        s.upload_use = up / up_cap.max(1.0);
        s.download_use = down / down_cap.max(1.0);
        s.registry_use = self.net.upload_rate(self.reg) / self.sc.registry.up;
        s.uploads_per_uploader = uploads as f64 / uploaders.max(1) as f64;
        self.out.samples.push(s);
        if let Some(every) = self.sc.sample_every {
            self.at(self.now + every, Event::Sample);
        }
    }
}
