//! containerd's filter syntax, as accepted by the snapshots `List` RPC
//! (`ListSnapshotsRequest.filters`).
//!
//! This follows containerd 1.6's Go package `filters` (scanner, parser and quoting
//! rules) and its snapshot adaptor (`metadata/adaptors.go`) closely, because
//! clients — the conformance suite first of all — send us exactly the strings they
//! would send containerd and expect the same answer, or the same refusal.
//!
//! # Syntax
//!
//! ```text
//! filters   := filter*                        (the request's list; OR-ed)
//! filter    := "" | selector ("," selector)*  (AND-ed)
//! selector  := fieldpath [operator value]     (no operator: "field is present")
//! fieldpath := field ("." field)*
//! field     := [A-Za-z0-9_]+ | "..."          (double quotes only)
//! operator  := "==" | "!=" | "~="             (~= is a regular expression)
//! value     := "..." | [^\s,]+                (after ~= also /.../ and |...|)
//! ```
//!
//! Quoted strings take Go's escapes (`\a \b \f \n \r \t \v \\`, the quote
//! character itself, `\ooo`, `\xhh`, `\uhhhh`, `\Uhhhhhhhh`). Whitespace may
//! precede any token but may not follow the last one, exactly as in Go.
//!
//! # Matching
//!
//! `==` needs the field present and equal; `!=` and `~=` compare the field's
//! value, taken as `""` when absent (so `labels.x!=y` matches objects without
//! label `x`). An empty list, or any empty string in it, matches everything.
//!
//! # Deliberate differences from Go
//!
//! * Regular expressions are compiled with Rust's `regex` crate, whose dialect is
//!   close to Go's RE2 but not identical. The common differences are smoothed
//!   over (`\d`, `\w`, `\s` and `\b` keep Go's ASCII meaning, `\123` is octal,
//!   `\<` is a plain `<`, `\u00e9` is refused); rarer ones remain (only Rust
//!   accepts `(?x)`, nested classes and `a**`; only Go accepts `\Q...\E` and
//!   `(?i)*`). As in Go, a pattern that does not compile is not a parse error;
//!   it simply matches nothing.
//! * Compilation is bounded (size limits per pattern, and at most
//!   [`MAX_REGEXES`] patterns per request) so a hostile request cannot exhaust
//!   memory. Exceeding the count is an `InvalidArgument`; exceeding a pattern's
//!   size limit makes that pattern match nothing, like any other bad pattern.
//! * Error messages quote the whole character at the error position, where Go
//!   slices a single byte (and so may print half of a multi-byte character).
//! * A quoted field-path component that decodes to invalid UTF-8 (possible only
//!   through `\x`/octal escapes) names a field no subject has.

mod matcher;
mod parser;
mod scanner;
#[cfg(test)]
mod tests;

use crate::{Error, Info, Result};
use matcher::Selector;
use parser::Parser;

/// Most `~=` selectors one request may carry. Each compiled pattern may take up to
/// 1 MiB plus a 1 MiB lazy-DFA cache, so this bounds a single `List` call to a few
/// tens of MiB however it is written.
pub const MAX_REGEXES: usize = 16;

/// Something filters can look at: containerd's "adaptor".
pub trait Fields {
    /// The value at a field path, or None when the field is absent.
    fn field(&self, path: &[String]) -> Option<&str>;
}

/// containerd's `adaptSnapshot`: only the first path component selects the field,
/// `name`, `parent` and `kind` are always present (an unparented snapshot has
/// parent `""`, so `parent!=""` selects exactly the parented ones while `parent`
/// alone matches everything), and the rest of a `labels.` path is re-joined with
/// `.` so that `labels.a.b` finds the label `a.b` just as `labels."a.b"` does.
impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<&str> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "name" => Some(&self.name),
            "parent" => Some(self.parent.as_deref().unwrap_or("")),
            "kind" => Some(self.kind.as_str()),
            "labels" => self.labels.get(&rest.join(".")).map(String::as_str),
            _ => None,
        }
    }
}

/// A parsed list of filters: matches a subject when any filter matches it, and a
/// filter matches when all its selectors do.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Empty means "no filters given", which matches everything; an empty
    /// conjunction (from an empty filter string) matches everything too.
    alternatives: Vec<Vec<Selector>>,
}

impl Filters {
    /// Parses the request's filter strings. Any syntax error is reported as
    /// [`Error::InvalidArgument`] naming the position and what was expected, in
    /// containerd's own wording.
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Filters> {
        let mut regex_budget = MAX_REGEXES;
        let alternatives = filters
            .iter()
            .map(|filter| Parser::new(filter.as_ref(), &mut regex_budget).filter())
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::InvalidArgument)?;
        Ok(Filters { alternatives })
    }

    /// Whether any filter accepts `subject`.
    pub fn matches(&self, subject: &dyn Fields) -> bool {
        self.alternatives.is_empty()
            || self
                .alternatives
                .iter()
                .any(|all| all.iter().all(|selector| selector.matches(subject)))
    }
}
