use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::label::ReadyLabel;

/// Set by the kubelet in every container; its absence means we are not in a pod.
pub const SERVICE_HOST_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// The figures the daemon already samples for metrics are refreshed this often;
/// alerting on them faster would only chase the same numbers.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// `--node-integration`: `auto` turns it on only inside a pod that knows its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            other => Err(Error::Mode(other.to_owned())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::On => "on",
            Mode::Off => "off",
        })
    }
}

/// Whether the integration runs, for which node, or why it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    On { node_name: String },
    Off { why: &'static str },
}

/// Decides from the mode, the node name (`--node-name` / `NODE_NAME`) and
/// `KUBERNETES_SERVICE_HOST`. Empty values count as unset: manifests often set
/// an env var to "" rather than leave it out.
pub fn decide(mode: Mode, node_name: Option<&str>, service_host: Option<&str>) -> Result<Decision> {
    let node_name = node_name.map(str::trim).filter(|n| !n.is_empty());
    let in_pod = service_host.is_some_and(|h| !h.trim().is_empty());
    match (mode, node_name) {
        (Mode::Off, _) => Ok(Decision::Off {
            why: "turned off (--node-integration off)",
        }),
        (Mode::On, None) => Err(Error::NoNodeName),
        (Mode::On, Some(name)) => Ok(Decision::On {
            node_name: name.to_owned(),
        }),
        (Mode::Auto, _) if !in_pod => Ok(Decision::Off {
            why: "not in a Kubernetes pod (KUBERNETES_SERVICE_HOST is unset)",
        }),
        (Mode::Auto, None) => Ok(Decision::Off {
            why: "no node name (set NODE_NAME from the pod's spec.nodeName, or --node-name)",
        }),
        (Mode::Auto, Some(name)) => Ok(Decision::On {
            node_name: name.to_owned(),
        }),
    }
}

/// When to warn. 0 % free inodes or 100 % pool use never trips: that turns a check off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Warn when free inodes on the root's filesystem fall under this share.
    pub inode_free_percent: u8,
    /// Warn when the thin pool's data or metadata use goes over this share.
    pub pool_used_percent: u8,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            inode_free_percent: 10,
            pool_used_percent: 90,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub node_name: String,
    /// This daemon's own label on the Node; each daemon on a node needs its own.
    pub ready_label: ReadyLabel,
    pub thresholds: Thresholds,
    pub interval: Duration,
}

impl Settings {
    /// With the default ready label; set [`Settings::ready_label`] for another.
    pub fn new(node_name: impl Into<String>, thresholds: Thresholds) -> Self {
        Settings {
            node_name: node_name.into(),
            ready_label: ReadyLabel::default(),
            thresholds,
            interval: DEFAULT_INTERVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_needs_both_a_pod_and_a_node_name() {
        let on = Decision::On {
            node_name: "n1".into(),
        };
        assert_eq!(
            decide(Mode::Auto, Some("n1"), Some("10.0.0.1")).unwrap(),
            on
        );
        assert!(matches!(
            decide(Mode::Auto, Some("n1"), None).unwrap(),
            Decision::Off { why } if why.contains("KUBERNETES_SERVICE_HOST")
        ));
        assert!(matches!(
            decide(Mode::Auto, None, Some("10.0.0.1")).unwrap(),
            Decision::Off { why } if why.contains("NODE_NAME")
        ));
        // An env var set to "" in a manifest is the same as unset.
        assert!(matches!(
            decide(Mode::Auto, Some(" "), Some("10.0.0.1")).unwrap(),
            Decision::Off { .. }
        ));
        assert!(matches!(
            decide(Mode::Auto, Some("n1"), Some("")).unwrap(),
            Decision::Off { .. }
        ));
    }

    #[test]
    fn on_ignores_the_pod_check_but_needs_a_name() {
        assert_eq!(
            decide(Mode::On, Some("n1"), None).unwrap(),
            Decision::On {
                node_name: "n1".into()
            }
        );
        assert!(matches!(
            decide(Mode::On, None, Some("10.0.0.1")),
            Err(Error::NoNodeName)
        ));
    }

    #[test]
    fn off_wins() {
        assert!(matches!(
            decide(Mode::Off, Some("n1"), Some("10.0.0.1")).unwrap(),
            Decision::Off { .. }
        ));
    }

    #[test]
    fn mode_round_trips() {
        for mode in [Mode::Auto, Mode::On, Mode::Off] {
            assert_eq!(mode.to_string().parse::<Mode>().unwrap(), mode);
        }
        assert!(matches!("yes".parse::<Mode>(), Err(Error::Mode(m)) if m == "yes"));
    }
}
