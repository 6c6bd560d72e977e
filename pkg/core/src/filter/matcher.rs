//! Selectors and how they judge a subject, with `~=` patterns compiled in Go's
//! dialect.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder};

use super::Fields;

/// Bound on one compiled pattern: generous for any label or name pattern
/// (`^sha256:[0-9a-f]{64}$` needs a few KiB) while `(a{1000}){1000}` would take
/// tens of MiB.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;
/// Go's regexp parser refuses nesting deeper than 1000; the regex crate's own
/// default (250) is already stricter, so pin it rather than rely on the default.
const REGEX_NEST_LIMIT: u32 = 250;

#[derive(Debug, Clone)]
pub(super) struct Selector {
    /// `None` when a component is not valid UTF-8: no subject has such a field.
    pub(super) path: Option<Vec<String>>,
    pub(super) op: Operator,
}

#[derive(Debug, Clone)]
pub(super) enum Operator {
    Present,
    /// The operands are `None` when the unquoted value is not valid UTF-8; such a
    /// value equals no field (all of which are strings).
    Equal(Option<String>),
    NotEqual(Option<String>),
    /// `None` when the pattern did not compile; like containerd, it matches nothing.
    Matches(Option<Regex>),
}

impl Selector {
    pub(super) fn matches(&self, subject: &dyn Fields) -> bool {
        let value = self.path.as_deref().and_then(|path| subject.field(path));
        match &self.op {
            Operator::Present => value.is_some(),
            Operator::Equal(want) => value.is_some() && value == want.as_deref(),
            // containerd compares the zero value of an absent field, so `!=` and
            // `~=` see "" there rather than failing outright.
            Operator::NotEqual(want) => Some(value.unwrap_or("")) != want.as_deref(),
            Operator::Matches(re) => re
                .as_ref()
                .is_some_and(|re| re.is_match(value.unwrap_or(""))),
        }
    }
}

pub(super) fn compile_regex(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(&go_dialect(pattern)?)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT)
        // Go's RE2 dialect reads `\123` as an octal character code.
        .octal(true)
        .build()
        .ok()
}

/// Rewrites the escapes whose meaning differs between Go's regexp and the regex
/// crate, or None for an escape Go refuses (so the pattern matches nothing there
/// too). Go's Perl classes are ASCII-only, the regex crate's Unicode-aware, which
/// would change what matches (`\d` on "٣") and cost megabytes per pattern
/// (`\w{64}`), so they are spelled out as bracketed ASCII classes — which the
/// regex crate also accepts nested inside a class (`[^\d]` becomes `[^[0-9]]`).
/// Every other escape is passed through untouched.
pub(super) fn go_dialect(pattern: &str) -> Option<Cow<'_, str>> {
    if !pattern.contains('\\') {
        return Some(Cow::Borrowed(pattern));
    }
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("[0-9]"),
            Some('D') => out.push_str("[^0-9]"),
            Some('w') => out.push_str("[0-9A-Za-z_]"),
            Some('W') => out.push_str("[^0-9A-Za-z_]"),
            // `\x20`, not a space, so that a `(?x)` flag cannot drop it.
            Some('s') => out.push_str(r"[\t\n\f\r\x20]"),
            Some('S') => out.push_str(r"[^\t\n\f\r\x20]"),
            Some('b') => out.push_str(r"(?-u:\b)"),
            Some('B') => out.push_str(r"(?-u:\B)"),
            // Word-start/end assertions in the regex crate, plain characters in Go.
            Some('<') => out.push_str(r"\x3C"),
            Some('>') => out.push_str(r"\x3E"),
            // The regex crate's Unicode escapes; Go has none.
            Some('u' | 'U') => return None,
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Some(Cow::Owned(out))
}
