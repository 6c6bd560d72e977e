//! The label this daemon puts on its Node, and the names derived from it. Two
//! daemons on one node (two chart releases, each with its own socket and root)
//! must not share it: one's clean shutdown would take the label away while the
//! other still serves.

use std::fmt;

use crate::error::{Error, Result};

/// The label of a daemon not told otherwise, which existing installs select on.
pub const READY_LABEL: &str = "rustlayer.io/ready";
/// Names us in the Node's managedFields and as the Events' reporting controller.
pub const FIELD_MANAGER: &str = "rustlayer";

/// Kubernetes caps field managers and Events' reporting instances at this.
const MAX_NAME_BYTES: usize = 128;
/// The parts of a qualified name, as Kubernetes' validation has them.
const MAX_PREFIX_BYTES: usize = 253;
const MAX_NAME_PART_BYTES: usize = 63;
const MAX_DNS_LABEL_BYTES: usize = 63;

/// A Kubernetes label key (a qualified name: `[prefix/]name`), checked when the
/// configuration is read so a bad one stops the daemon at start, not at its first
/// patch of the Node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadyLabel(String);

impl Default for ReadyLabel {
    fn default() -> Self {
        ReadyLabel(READY_LABEL.to_owned())
    }
}

impl ReadyLabel {
    pub fn new(key: &str) -> Result<ReadyLabel> {
        validate_label_key(key).map_err(|problem| Error::Label {
            key: key.to_owned(),
            problem,
        })?;
        Ok(ReadyLabel(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == READY_LABEL
    }

    /// The field manager of our patches to the Node: `rustlayer` for the default
    /// label, so managedFields of existing installs stay as they were, else one
    /// per label, so each daemon's ownership of its label shows on its own.
    pub fn field_manager(&self) -> String {
        if self.is_default() {
            FIELD_MANAGER.to_owned()
        } else {
            cap(format!("{FIELD_MANAGER}:{}", self.0))
        }
    }

    /// The reporting instance of our Events on `node`: the node for the default
    /// label (one daemon per node), else the node and the label, so Events of two
    /// daemons on one node tell which posted them.
    pub fn reporting_instance(&self, node: &str) -> String {
        if self.is_default() {
            node.to_owned()
        } else {
            cap(format!("{node}:{}", self.0))
        }
    }
}

impl fmt::Display for ReadyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Cuts to what the API server accepts; the text is ASCII (node names and label
/// keys are), so any byte is a char boundary.
fn cap(mut name: String) -> String {
    if name.len() > MAX_NAME_BYTES && name.is_ascii() {
        name.truncate(MAX_NAME_BYTES);
    }
    name
}

/// Kubernetes' rules for a label key, with the reason a key breaks them.
fn validate_label_key(key: &str) -> std::result::Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("the prefix before '/' is empty".into());
        }
        if prefix.len() > MAX_PREFIX_BYTES {
            return Err(format!(
                "the prefix is {} bytes, over the {MAX_PREFIX_BYTES} a DNS subdomain may have",
                prefix.len()
            ));
        }
        for part in prefix.split('.') {
            validate_dns_label(part).map_err(|problem| {
                format!("the prefix {prefix:?} is no DNS subdomain: {problem}")
            })?;
        }
    }
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_PART_BYTES {
        return Err(format!(
            "the name {name:?} is {} bytes, over the {MAX_NAME_PART_BYTES} allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "the name {name:?} has {bad:?}; only letters, digits, '-', '_' and '.' are allowed \
             (and at most one '/', after a DNS prefix)"
        ));
    }
    if !starts_and_ends_alphanumeric(name) {
        return Err(format!(
            "the name {name:?} must begin and end with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_dns_label(part: &str) -> std::result::Result<(), String> {
    if part.is_empty() {
        return Err("it has an empty part between dots".into());
    }
    if part.len() > MAX_DNS_LABEL_BYTES {
        return Err(format!("{part:?} is over {MAX_DNS_LABEL_BYTES} bytes"));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{part:?} has {bad:?}; only lowercase letters, digits and '-' are allowed"
        ));
    }
    if !starts_and_ends_alphanumeric(part) {
        return Err(format!(
            "{part:?} must begin and end with a letter or digit"
        ));
    }
    Ok(())
}

fn starts_and_ends_alphanumeric(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(key: &str) -> String {
        match ReadyLabel::new(key) {
            Err(Error::Label { key: k, problem }) => {
                assert_eq!(k, key);
                problem
            }
            other => panic!("{key:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn the_default_is_the_label_existing_installs_select_on() {
        let label = ReadyLabel::default();
        assert_eq!(label.as_str(), "rustlayer.io/ready");
        assert!(label.is_default());
        assert_eq!(ReadyLabel::new(READY_LABEL).unwrap(), label);
        assert_eq!(label.field_manager(), "rustlayer");
        assert_eq!(label.reporting_instance("node-a"), "node-a");
    }

    #[test]
    fn label_keys_kubernetes_accepts_are_accepted() {
        for key in [
            "rustlayer.io/ready-rustlayer-limited",
            "ready",
            "Ready_1.x",
            "example.com/A-b_c.9",
            "a/b",
            &format!("{}/{}", "d".repeat(63), "n".repeat(63)),
        ] {
            let label = ReadyLabel::new(key).unwrap_or_else(|err| panic!("{key:?}: {err}"));
            assert_eq!(label.as_str(), key);
            assert_eq!(label.is_default(), key == READY_LABEL);
        }
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "the name is empty"),
            ("rustlayer.io/", "the name is empty"),
            ("/ready", "the prefix before '/' is empty"),
            ("rustlayer.io/ready/x", "has '/'"),
            ("rustlayer.io/ready x", "has ' '"),
            (
                "rustlayer.io/-ready",
                "must begin and end with a letter or digit",
            ),
            (
                "rustlayer.io/ready_",
                "must begin and end with a letter or digit",
            ),
            ("Rustlayer.io/ready", "is no DNS subdomain"),
            ("rustlayer..io/ready", "empty part between dots"),
            (
                "rust_layer.io/ready",
                "only lowercase letters, digits and '-'",
            ),
            (
                "-rustlayer.io/ready",
                "must begin and end with a letter or digit",
            ),
        ];
        for (key, expected) in cases {
            let problem = problem(key);
            assert!(problem.contains(expected), "{key:?}: {problem}");
        }
        let long_name = format!("rustlayer.io/{}", "r".repeat(64));
        assert!(problem(&long_name).contains("64 bytes, over the 63"));
        let long_prefix = format!("{}/ready", vec!["a".repeat(63); 5].join("."));
        assert!(problem(&long_prefix).contains("over the 253"));
        let long_part = format!("{}.io/ready", "a".repeat(64));
        assert!(problem(&long_part).contains("is over 63 bytes"));
    }

    #[test]
    fn the_error_names_the_key() {
        let err = ReadyLabel::new("bad key").unwrap_err().to_string();
        assert!(err.contains("\"bad key\""), "{err}");
        assert!(err.contains("label key"), "{err}");
    }

    #[test]
    fn other_labels_get_their_own_field_manager_and_reporting_instance() {
        let limited = ReadyLabel::new("rustlayer.io/ready-rustlayer-limited").unwrap();
        assert!(!limited.is_default());
        assert_eq!(
            limited.field_manager(),
            "rustlayer:rustlayer.io/ready-rustlayer-limited"
        );
        assert_eq!(
            limited.reporting_instance("node-a"),
            "node-a:rustlayer.io/ready-rustlayer-limited"
        );
        // The API server refuses either over 128 bytes.
        let long = ReadyLabel::new(&format!("{}/{}", "d".repeat(63), "n".repeat(63))).unwrap();
        assert_eq!(long.field_manager().len(), 128);
        assert_eq!(long.reporting_instance(&"n".repeat(100)).len(), 128);
    }
}
