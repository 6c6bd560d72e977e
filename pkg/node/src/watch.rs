//! The thresholds, kept free of Kubernetes so the hysteresis is tested on plain numbers.

use std::path::Path;

use rustlayer_core::{Backend, PoolStats};
use tracing::warn;

use crate::settings::Thresholds;

/// How far a figure must move back past its threshold before "Recovered": a pool
/// hovering at the line would otherwise post a pair of events every sample.
pub const HYSTERESIS_PERCENT: f64 = 2.0;

/// Inode counts of the filesystem holding the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inodes {
    pub total: u64,
    pub free: u64,
}

/// One reading of what the checks look at. `None` where a figure could not be read
/// or does not exist (overlay has no pool); such a check keeps its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub root_inodes: Option<Inodes>,
    pub pool: Option<PoolStats>,
}

impl Sample {
    /// Reads the root's filesystem and the backend's pool; blocking.
    pub fn gather(root: &Path, backend: &dyn Backend) -> Sample {
        let root_inodes = match rustlayer_mount::fs_stats(root) {
            Ok(stats) => Some(Inodes {
                total: stats.inodes_total,
                free: stats.inodes_free,
            }),
            Err(err) => {
                warn!(%err, "node checks: cannot read the root filesystem");
                None
            }
        };
        let pool = match backend.pool_stats() {
            Ok(pool) => pool,
            Err(err) => {
                warn!(%err, "node checks: cannot read the thin pool");
                None
            }
        };
        Sample { root_inodes, pool }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    InodesLow,
    ThinPoolDataLow,
    ThinPoolMetadataLow,
}

impl Condition {
    pub const ALL: [Condition; 3] = [
        Condition::InodesLow,
        Condition::ThinPoolDataLow,
        Condition::ThinPoolMetadataLow,
    ];

    /// The Event reason while the condition holds.
    pub fn reason(self) -> &'static str {
        match self {
            Condition::InodesLow => "InodesLow",
            Condition::ThinPoolDataLow => "ThinPoolDataLow",
            Condition::ThinPoolMetadataLow => "ThinPoolMetadataLow",
        }
    }

    /// The Event action. Distinct per condition because the event recorder folds
    /// events with the same reason and action into one series: a "Recovered" of the
    /// pool must not be counted as a repeat of the inodes' one.
    pub fn action(self) -> &'static str {
        match self {
            Condition::InodesLow => "CheckRootInodes",
            Condition::ThinPoolDataLow => "CheckThinPoolData",
            Condition::ThinPoolMetadataLow => "CheckThinPoolMetadata",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The figure in percent, where a low free share or a high used share is bad.
    fn level(self, sample: &Sample) -> Option<f64> {
        match self {
            Condition::InodesLow => sample.root_inodes.and_then(|i| percent(i.free, i.total)),
            Condition::ThinPoolDataLow => sample
                .pool
                .as_ref()
                .and_then(|p| percent(p.data_used_bytes, p.data_size_bytes)),
            Condition::ThinPoolMetadataLow => sample
                .pool
                .as_ref()
                .and_then(|p| percent(p.metadata_used_bytes, p.metadata_size_bytes)),
        }
    }

    fn trips(self, level: f64, t: &Thresholds) -> bool {
        match self {
            Condition::InodesLow => level < f64::from(t.inode_free_percent),
            _ => level > f64::from(t.pool_used_percent),
        }
    }

    fn clears(self, level: f64, t: &Thresholds) -> bool {
        match self {
            Condition::InodesLow => level >= f64::from(t.inode_free_percent) + HYSTERESIS_PERCENT,
            _ => level <= f64::from(t.pool_used_percent) - HYSTERESIS_PERCENT,
        }
    }

    fn note(self, raised: bool, level: f64, t: &Thresholds, sample: &Sample) -> String {
        let pool = sample.pool.as_ref().map_or("", |p| p.pool.as_str());
        match (self, raised) {
            (Condition::InodesLow, true) => format!(
                "free inodes on the filesystem holding the snapshot root are at {level:.1}%, \
                 under the {}% threshold; new layers fail once none are left",
                t.inode_free_percent
            ),
            (Condition::InodesLow, false) => format!(
                "free inodes on the filesystem holding the snapshot root are back at {level:.1}% \
                 (threshold {}%)",
                t.inode_free_percent
            ),
            (Condition::ThinPoolDataLow, true) => format!(
                "thin pool {pool}: data space {level:.1}% used, over the {}% threshold; \
                 writes to thin devices fail once it is full",
                t.pool_used_percent
            ),
            (Condition::ThinPoolDataLow, false) => format!(
                "thin pool {pool}: data space back at {level:.1}% used (threshold {}%)",
                t.pool_used_percent
            ),
            (Condition::ThinPoolMetadataLow, true) => format!(
                "thin pool {pool}: metadata space {level:.1}% used, over the {}% threshold; \
                 the pool turns read-only once it is full",
                t.pool_used_percent
            ),
            (Condition::ThinPoolMetadataLow, false) => format!(
                "thin pool {pool}: metadata space back at {level:.1}% used (threshold {}%)",
                t.pool_used_percent
            ),
        }
    }
}

/// A filesystem that reports no inode count (btrfs) or an empty pool has no share.
fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An Event on our Node, in the terms of the events.k8s.io API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// Reason of the Normal event posted when a condition no longer holds.
pub const RECOVERED: &str = "Recovered";

/// Turns samples into events on crossings only. Every condition starts as not
/// holding, so a daemon started on an already short node warns at once, and one
/// started on a healthy node says nothing.
#[derive(Debug, Clone)]
pub struct Watcher {
    thresholds: Thresholds,
    holding: [bool; Condition::ALL.len()],
}

impl Watcher {
    pub fn new(thresholds: Thresholds) -> Self {
        Watcher {
            thresholds,
            holding: [false; Condition::ALL.len()],
        }
    }

    pub fn holds(&self, condition: Condition) -> bool {
        self.holding[condition.index()]
    }

    /// The events this sample calls for, in the order of [`Condition::ALL`].
    pub fn observe(&mut self, sample: &Sample) -> Vec<NodeEvent> {
        let t = self.thresholds;
        let mut events = Vec::new();
        for condition in Condition::ALL {
            let Some(level) = condition.level(sample) else {
                continue;
            };
            let holding = &mut self.holding[condition.index()];
            let raised = if !*holding && condition.trips(level, &t) {
                true
            } else if *holding && condition.clears(level, &t) {
                false
            } else {
                continue;
            };
            *holding = raised;
            events.push(NodeEvent {
                type_: if raised {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: if raised {
                    condition.reason()
                } else {
                    RECOVERED
                },
                action: condition.action(),
                note: condition.note(raised, level, &t, sample),
            });
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inodes(free_percent: u64) -> Sample {
        Sample {
            root_inodes: Some(Inodes {
                total: 1000,
                free: free_percent * 10,
            }),
            pool: None,
        }
    }

    fn pool(data_used_percent: u64, metadata_used_percent: u64) -> Sample {
        Sample {
            root_inodes: None,
            pool: Some(PoolStats {
                pool: "rustlayer-pool".into(),
                data_used_bytes: data_used_percent * 100,
                data_size_bytes: 10_000,
                metadata_used_bytes: metadata_used_percent,
                metadata_size_bytes: 100,
                thin_devices: 3,
            }),
        }
    }

    fn reasons(events: &[NodeEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn inodes_warn_once_on_crossing_and_recover_past_the_band() {
        let mut w = Watcher::new(Thresholds::default());
        assert!(w.observe(&inodes(50)).is_empty());
        assert!(
            w.observe(&inodes(10)).is_empty(),
            "10% free is not under 10%"
        );

        let events = w.observe(&inodes(9));
        assert_eq!(reasons(&events), ["InodesLow"]);
        assert_eq!(events[0].type_, EventType::Warning);
        assert_eq!(events[0].action, "CheckRootInodes");
        assert!(events[0].note.contains("9.0%"), "{}", events[0].note);
        assert!(
            events[0].note.contains("10% threshold"),
            "{}",
            events[0].note
        );
        assert!(w.holds(Condition::InodesLow));

        // Still low, and wobbling inside the band: no more events.
        for free in [5, 9, 10, 11, 8] {
            assert!(w.observe(&inodes(free)).is_empty(), "at {free}%");
        }
        let events = w.observe(&inodes(12));
        assert_eq!(reasons(&events), ["Recovered"]);
        assert_eq!(events[0].type_, EventType::Normal);
        assert_eq!(events[0].action, "CheckRootInodes");
        assert!(events[0].note.contains("12.0%"), "{}", events[0].note);
        assert!(!w.holds(Condition::InodesLow));
        assert!(w.observe(&inodes(40)).is_empty());

        // A second crossing warns again.
        assert_eq!(reasons(&w.observe(&inodes(3))), ["InodesLow"]);
    }

    #[test]
    fn starting_short_warns_at_once_and_starting_healthy_says_nothing() {
        let mut w = Watcher::new(Thresholds::default());
        assert_eq!(reasons(&w.observe(&pool(95, 10))), ["ThinPoolDataLow"]);
        let mut w = Watcher::new(Thresholds::default());
        assert!(w.observe(&pool(10, 10)).is_empty());
    }

    #[test]
    fn pool_data_and_metadata_are_separate_conditions() {
        let mut w = Watcher::new(Thresholds::default());
        assert!(w.observe(&pool(90, 50)).is_empty(), "90% is not over 90%");
        let events = w.observe(&pool(91, 50));
        assert_eq!(reasons(&events), ["ThinPoolDataLow"]);
        assert!(
            events[0].note.contains("rustlayer-pool"),
            "{}",
            events[0].note
        );
        assert!(events[0].note.contains("91.0% used"), "{}", events[0].note);

        let events = w.observe(&pool(91, 97));
        assert_eq!(reasons(&events), ["ThinPoolMetadataLow"]);
        assert_eq!(events[0].action, "CheckThinPoolMetadata");

        // Data falls back into the band: nothing. Below the band: recovered, and
        // metadata stays raised.
        assert!(w.observe(&pool(89, 97)).is_empty());
        let events = w.observe(&pool(88, 97));
        assert_eq!(reasons(&events), ["Recovered"]);
        assert_eq!(events[0].action, "CheckThinPoolData");
        assert!(w.holds(Condition::ThinPoolMetadataLow));
        assert!(!w.holds(Condition::ThinPoolDataLow));

        // Both at once come in a fixed order.
        let mut w = Watcher::new(Thresholds::default());
        assert_eq!(
            reasons(&w.observe(&pool(99, 99))),
            ["ThinPoolDataLow", "ThinPoolMetadataLow"]
        );
    }

    #[test]
    fn a_missing_figure_keeps_the_state() {
        let mut w = Watcher::new(Thresholds::default());
        assert_eq!(reasons(&w.observe(&inodes(1))), ["InodesLow"]);
        // A failed statvfs must neither recover nor re-raise.
        assert!(w.observe(&Sample::default()).is_empty());
        assert!(w.holds(Condition::InodesLow));
        assert!(w.observe(&inodes(1)).is_empty());
    }

    #[test]
    fn filesystems_without_inode_counts_are_never_short() {
        let mut w = Watcher::new(Thresholds::default());
        let btrfs = Sample {
            root_inodes: Some(Inodes { total: 0, free: 0 }),
            pool: None,
        };
        assert!(w.observe(&btrfs).is_empty());
        assert!(!w.holds(Condition::InodesLow));
    }

    #[test]
    fn extreme_thresholds_turn_checks_off() {
        let off = Thresholds {
            inode_free_percent: 0,
            pool_used_percent: 100,
        };
        let mut w = Watcher::new(off);
        let mut worst = pool(100, 100);
        worst.root_inodes = Some(Inodes {
            total: 1000,
            free: 0,
        });
        assert!(w.observe(&worst).is_empty());
    }

    #[test]
    fn custom_thresholds_apply() {
        let mut w = Watcher::new(Thresholds {
            inode_free_percent: 30,
            pool_used_percent: 50,
        });
        let mut s = pool(60, 10);
        s.root_inodes = Some(Inodes {
            total: 100,
            free: 25,
        });
        assert_eq!(reasons(&w.observe(&s)), ["InodesLow", "ThinPoolDataLow"]);
    }
}
