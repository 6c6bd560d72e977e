//! Input checks applied before anything is touched, so a rejected request changes
//! nothing and gets a precise `InvalidArgument`.

use crate::{Error, IdMapping, Labels, Result};

/// containerd's limit for one label (key and value together).
pub const MAX_LABEL_BYTES: usize = 4096;

/// Keys are `<namespace>/<id>/<name>` in practice; anything this long is abuse.
pub const MAX_KEY_BYTES: usize = 4096;

/// A bound on the whole label set, so one request cannot bloat the store.
pub const MAX_LABELS_TOTAL_BYTES: usize = 256 * 1024;

pub fn key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes, more than the {MAX_KEY_BYTES} allowed",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{what} must not contain NUL bytes"
        )));
    }
    Ok(())
}

/// A parent is optional, but when given it obeys the rules of keys.
pub fn parent(parent: &str) -> Result<()> {
    if parent.is_empty() {
        Ok(())
    } else {
        key("parent", parent)
    }
}

pub fn labels(labels: &Labels) -> Result<()> {
    let mut total = 0usize;
    for (k, v) in labels {
        let size = k.len() + v.len();
        if size > MAX_LABEL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "label {:?} is {size} bytes (key and value), more than the {MAX_LABEL_BYTES} allowed",
                truncated(k)
            )));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "label {:?} contains a NUL byte",
                truncated(k)
            )));
        }
        total += size;
    }
    if total > MAX_LABELS_TOTAL_BYTES {
        return Err(Error::InvalidArgument(format!(
            "labels total {total} bytes, more than the {MAX_LABELS_TOTAL_BYTES} allowed"
        )));
    }
    Ok(())
}

/// The user-namespace mapping a new snapshot's labels ask for, refused when
/// malformed (see [`IdMapping::from_labels`]). Checked on a snapshot's whole label
/// set, never on a partial update of it.
pub fn id_mapping(labels: &Labels) -> Result<Option<IdMapping>> {
    IdMapping::from_labels(labels)
}

/// The label containerd defines for a snapshot's size limit, in bytes: a hint a
/// snapshotter may honour (overlay on a root with project quotas, devmapper).
pub const MAX_SIZE_LABEL: &str = "containerd.io/snapshot/max-size";

/// The size limit a snapshot's labels ask for: none without the label, and an
/// `InvalidArgument` for anything but a positive decimal number of bytes (no sign,
/// no unit, no spaces), so a typo never silently means "unlimited". The label
/// stays on the snapshot as given.
pub fn max_size(labels: &Labels) -> Result<Option<u64>> {
    let Some(text) = labels.get(MAX_SIZE_LABEL) else {
        return Ok(None);
    };
    let invalid = |problem: &str| {
        Error::InvalidArgument(format!(
            "label {MAX_SIZE_LABEL}={:?} {problem}",
            truncated(text)
        ))
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("is not a positive number of bytes"));
    }
    match text.parse::<u64>() {
        Ok(0) => Err(invalid("is zero; give a positive number of bytes")),
        Ok(bytes) => Ok(Some(bytes)),
        Err(_) => Err(invalid("is larger than 2^64 - 1 bytes")),
    }
}

/// The longest start of `text` of at most `max` bytes that does not split a
/// character: what a log line or an error message shows of unbounded input.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Echoing a megabyte of hostile input back in an error helps nobody.
fn truncated(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    format!("{}…", truncate(s, SHOWN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    fn code(r: Result<()>) -> Option<Code> {
        r.err().map(|e| e.code())
    }

    #[test]
    fn keys() {
        assert_eq!(code(key("key", "default/1/extract sha256:abc")), None);
        assert_eq!(
            code(key("key", "../../etc/passwd")),
            None,
            "keys are never paths"
        );
        assert_eq!(code(key("key", "")), Some(Code::InvalidArgument));
        assert_eq!(code(key("key", "a\0b")), Some(Code::InvalidArgument));
        assert_eq!(
            code(key("key", &"k".repeat(MAX_KEY_BYTES + 1))),
            Some(Code::InvalidArgument)
        );
        assert_eq!(code(parent("")), None);
        assert_eq!(code(parent("\0")), Some(Code::InvalidArgument));
    }

    #[test]
    fn label_limits_follow_containerd() {
        let mut l = Labels::new();
        l.insert("k".into(), "v".repeat(MAX_LABEL_BYTES - 1));
        assert_eq!(code(labels(&l)), None);
        l.insert("k".into(), "v".repeat(MAX_LABEL_BYTES));
        assert_eq!(code(labels(&l)), Some(Code::InvalidArgument));
    }

    #[test]
    fn max_size_is_a_positive_number_of_bytes() {
        let with = |v: &str| -> Labels { [(MAX_SIZE_LABEL.to_owned(), v.to_owned())].into() };
        assert_eq!(max_size(&Labels::new()).unwrap(), None);
        assert_eq!(max_size(&with("1")).unwrap(), Some(1));
        assert_eq!(max_size(&with("1073741824")).unwrap(), Some(1 << 30));
        assert_eq!(
            max_size(&with("18446744073709551615")).unwrap(),
            Some(u64::MAX)
        );
        for bad in [
            "",
            "0",
            "000",
            "-1",
            "-0",
            "+5",
            " 5",
            "5 ",
            "1GiB",
            "1e9",
            "1.5",
            "0x10",
            "abc",
            "18446744073709551616",
        ] {
            let err = max_size(&with(bad)).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
            assert!(err.to_string().contains(MAX_SIZE_LABEL), "{err}");
        }
        let err = max_size(&with(&"9".repeat(3000))).unwrap_err();
        assert!(
            err.to_string().len() < 300,
            "hostile input is not echoed whole"
        );
    }

    #[test]
    fn huge_label_sets_are_refused_and_not_echoed() {
        let l: Labels = (0..100)
            .map(|i| (format!("{i:04}{}", "k".repeat(3000)), String::new()))
            .collect();
        let err = labels(&l).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().len() < 200, "{err}");
    }
}
