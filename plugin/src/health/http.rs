//! shoald's local HTTP endpoint (`[metrics] listen`): `GET /metrics` (Prometheus, with the
//! health gauges brought up to date first) and `GET /status` (the [`StatusReport`] as JSON,
//! what `shoald status` reads). Both come from one [`Health::report_at`].

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use shoal_p2p::metrics::Registry;

use super::report::StatusReport;
use super::{Component, Health, State};

/// Labels of a per-component metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub component: &'static str,
}

/// Labels of the per-component state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentStateLabel {
    pub component: &'static str,
    pub state: &'static str,
}

/// Labels of the pulls-in-flight gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    /// `snapshotter` or `mirror`.
    pub path: &'static str,
}

/// The health metrics (names in [`HealthMetrics::register`]). Reasons are not labels (they
/// are free text): they are in `/status` and the log.
#[derive(Clone, Debug, Default)]
pub struct HealthMetrics {
    /// 1 up, 0 degraded or down; absent while the component is off.
    up: Family<ComponentLabel, Gauge>,
    /// 1 on the component's current state, 0 on the others.
    state: Family<ComponentStateLabel, Gauge>,
    /// Times the component went degraded or down.
    degraded: Family<ComponentLabel, Counter>,
    cache_bytes: Gauge,
    cache_blobs: Gauge,
    cache_max_bytes: Gauge,
    pulls_active: Family<PathLabel, Gauge>,
    trackers_unreachable: Gauge,
}

impl HealthMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shoal_component_up",
            "1 when the component is up, 0 when degraded or down (absent when off)",
            self.up.clone(),
        );
        registry.register(
            "shoal_component_state",
            "1 on the component's current state (up, degraded, down, off), 0 on the others",
            self.state.clone(),
        );
        registry.register(
            "shoal_component_degraded",
            "Times the component went degraded or down (why: shoald status, the log)",
            self.degraded.clone(),
        );
        registry.register(
            "shoal_cache_used_bytes",
            "Bytes of blobs in the blob cache",
            self.cache_bytes.clone(),
        );
        registry.register(
            "shoal_cache_blobs",
            "Blobs in the blob cache",
            self.cache_blobs.clone(),
        );
        registry.register(
            "shoal_cache_max_bytes",
            "The blob cache's bound in bytes",
            self.cache_max_bytes.clone(),
        );
        registry.register(
            "shoal_pulls_active",
            "Blob fetches running now, by path (snapshotter: remote layers; mirror)",
            self.pulls_active.clone(),
        );
        registry.register(
            "shoal_swarm_trackers_unreachable",
            "Trackers whose last announce failed",
            self.trackers_unreachable.clone(),
        );
    }

    /// Shows `component` in `state`.
    pub(super) fn show(&self, component: Component, state: State) {
        let c = component.name();
        match state {
            State::Off => {
                self.up.remove(&ComponentLabel { component: c });
            }
            s => {
                let v = i64::from(s == State::Up);
                self.up
                    .get_or_create(&ComponentLabel { component: c })
                    .set(v);
            }
        }
        for s in State::ALL {
            let label = ComponentStateLabel {
                component: c,
                state: s.as_str(),
            };
            self.state.get_or_create(&label).set(i64::from(s == state));
        }
        // Present (at 0) from the start, so that rates work from the first failure.
        let _ = self
            .degraded
            .get_or_create(&ComponentLabel { component: c });
    }

    /// Counts one more time `component` went degraded or down.
    pub(super) fn count_degraded(&self, component: Component) {
        self.degraded
            .get_or_create(&ComponentLabel {
                component: component.name(),
            })
            .inc();
    }

    /// The gauges that are read rather than reported, from `report`.
    pub fn update(&self, report: &StatusReport) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(c) = &report.cache {
            self.cache_bytes.set(g(c.bytes));
            self.cache_blobs.set(g(c.blobs));
            self.cache_max_bytes.set(g(c.max_bytes));
        }
        let pulls = &report.pulls_in_flight;
        for (path, n) in [("snapshotter", pulls.snapshotter), ("mirror", pulls.mirror)] {
            self.pulls_active
                .get_or_create(&PathLabel { path })
                .set(g(n));
        }
        let unreachable = report.swarm.as_ref().map_or(0, |s| {
            s.trackers
                .iter()
                .filter(|t| t.reachable == Some(false))
                .count()
        });
        self.trackers_unreachable.set(g(unreachable as u64));
    }
}

/// `GET /metrics` and `GET /status` (see the module documentation).
pub fn router(registry: Arc<Registry>, health: Health) -> axum::Router {
    let for_metrics = health.clone();
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (registry, health) = (registry.clone(), for_metrics.clone());
                async move {
                    let report = health.report_at(Instant::now());
                    health.metrics().update(&report);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            shoal_p2p::metrics::CONTENT_TYPE,
                        )],
                        shoal_p2p::metrics::render(&registry),
                    )
                }
            }),
        )
        .route(
            "/status",
            axum::routing::get(move || {
                let health = health.clone();
                async move { axum::Json(health.report_at(Instant::now())) }
            }),
        )
}
