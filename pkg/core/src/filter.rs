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

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};

use crate::{Error, Info, Result};

/// Most `~=` selectors one request may carry. Each compiled pattern may take up to
/// 1 MiB plus a 1 MiB lazy-DFA cache, so this bounds a single `List` call to a few
/// tens of MiB however it is written.
pub const MAX_REGEXES: usize = 16;
/// Bound on one compiled pattern: generous for any label or name pattern
/// (`^sha256:[0-9a-f]{64}$` needs a few KiB) while `(a{1000}){1000}` would take
/// tens of MiB.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;
/// Go's regexp parser refuses nesting deeper than 1000; the regex crate's own
/// default (250) is already stricter, so pin it rather than rely on the default.
const REGEX_NEST_LIMIT: u32 = 250;

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

#[derive(Debug, Clone)]
struct Selector {
    /// `None` when a component is not valid UTF-8: no subject has such a field.
    path: Option<Vec<String>>,
    op: Operator,
}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    /// The operands are `None` when the unquoted value is not valid UTF-8; such a
    /// value equals no field (all of which are strings).
    Equal(Option<String>),
    NotEqual(Option<String>),
    /// `None` when the pattern did not compile; like containerd, it matches nothing.
    Matches(Option<Regex>),
}

impl Selector {
    fn matches(&self, subject: &dyn Fields) -> bool {
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

fn compile_regex(pattern: &str) -> Option<Regex> {
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
fn go_dialect(pattern: &str) -> Option<Cow<'_, str>> {
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

// ---------------------------------------------------------------------------
// Scanner

/// One character as the scanner sees it. Go's scanner turns NUL and U+FFFD (its
/// decoding-error marker) into an "illegal" pseudo-character; keeping that makes
/// our error positions and messages line up with containerd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ch {
    Eof,
    Illegal(ScanError),
    Char(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanError {
    RuneError,
    UnexpectedNull,
    NotTerminated,
    IllegalEscape,
    IllegalNumericEscape,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScanError::RuneError => "rune error",
            ScanError::UnexpectedNull => "unexpected null",
            ScanError::NotTerminated => "quoted literal not terminated",
            ScanError::IllegalEscape => "illegal escape sequence",
            ScanError::IllegalNumericEscape => "illegal numeric escape sequence",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Eof,
    Illegal(ScanError),
    Quoted,
    Value,
    Field,
    Separator,
    Operator,
    /// A character that starts no token; the parser reports what it expected.
    Other(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lexeme<'a> {
    pos: usize,
    tok: Tok,
    /// The token's source text; empty for `Eof`, `Other` and a bare illegal
    /// character, as in Go.
    text: &'a str,
}

/// What the parser expects next. Go keeps this as scanner state set by an
/// operator; here the parser simply says so, since only `value` ever asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Field,
    Value,
}

struct Scanner<'a> {
    input: &'a str,
    /// Byte offset of the character most recently read (Go's `pos`).
    start: usize,
    /// Byte offset just past it (Go's `ppos`); where `peek` looks.
    end: usize,
    /// First error met while scanning the current token. Go keeps the first error
    /// of the whole scan, but any error ends the parse at that token, so scoping
    /// it to the token gives the same messages.
    err: Option<ScanError>,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Scanner {
            input,
            start: 0,
            end: 0,
            err: None,
        }
    }

    fn peek(&self) -> Ch {
        classify(self.input[self.end..].chars().next())
    }

    fn bump(&mut self) -> Ch {
        let next = self.input[self.end..].chars().next();
        self.start = self.end;
        self.end += next.map_or(0, char::len_utf8);
        let ch = classify(next);
        if let Ch::Illegal(e) = ch {
            self.note(e);
        }
        ch
    }

    fn note(&mut self, e: ScanError) {
        self.err.get_or_insert(e);
    }

    fn eat_while(&mut self, pred: impl Fn(char) -> bool) {
        while let Ch::Char(c) = self.peek() {
            if !pred(c) {
                break;
            }
            self.bump();
        }
    }

    fn scan(&mut self, want: Want) -> Lexeme<'a> {
        self.err = None;
        loop {
            let ch = self.bump();
            let pos = self.start;
            let tok = match ch {
                Ch::Eof => Tok::Eof,
                Ch::Illegal(e) => Tok::Illegal(e),
                Ch::Char(c) if is_quote_char(c) => match self.scan_quoted(c) {
                    Ok(()) => Tok::Quoted,
                    Err(e) => Tok::Illegal(e),
                },
                Ch::Char(',' | '.') => Tok::Separator,
                Ch::Char(c) if is_operator_char(c) => {
                    self.eat_while(is_operator_char);
                    Tok::Operator
                }
                Ch::Char(c) if c.is_whitespace() => continue,
                // After an operator anything else starts a value, even a character
                // that could not continue one (Go checks this before field runes).
                Ch::Char(_) if want == Want::Value => {
                    self.eat_while(is_value_char);
                    Tok::Value
                }
                Ch::Char(c) if is_field_char(c) => {
                    self.eat_while(is_field_char);
                    Tok::Field
                }
                Ch::Char(c) => Tok::Other(c),
            };
            let text = match tok {
                Tok::Eof | Tok::Other(_) => "",
                Tok::Illegal(_) if !matches!(ch, Ch::Char(_)) => "",
                _ => &self.input[pos..self.end],
            };
            return Lexeme { pos, tok, text };
        }
    }

    /// Finds the end of a quoted literal, checking escapes as Go's scanner does
    /// (their values are decoded later by [`unquote`]).
    fn scan_quoted(&mut self, quote: char) -> std::result::Result<(), ScanError> {
        let mut ch = self.bump();
        loop {
            match ch {
                Ch::Char(c) if c == quote => break,
                Ch::Eof | Ch::Illegal(_) | Ch::Char('\n') => {
                    self.note(ScanError::NotTerminated);
                    break;
                }
                Ch::Char('\\') => ch = self.scan_escape(quote),
                Ch::Char(_) => ch = self.bump(),
            }
        }
        self.err.take().map_or(Ok(()), Err)
    }

    /// Consumes an escape after its backslash and returns the character after it.
    /// Like Go, an unknown escape character is handed back unconsumed, so that a
    /// newline or the end of input right after a backslash still reads as an
    /// unterminated literal.
    fn scan_escape(&mut self, quote: char) -> Ch {
        let ch = self.bump();
        match ch {
            Ch::Char('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => self.bump(),
            Ch::Char(c) if c == quote => self.bump(),
            Ch::Char('0'..='7') => self.scan_digits(ch, 8, 3),
            Ch::Char('x') => {
                let first = self.bump();
                self.scan_digits(first, 16, 2)
            }
            Ch::Char('u') => {
                let first = self.bump();
                self.scan_digits(first, 16, 4)
            }
            Ch::Char('U') => {
                let first = self.bump();
                self.scan_digits(first, 16, 8)
            }
            _ => {
                self.note(ScanError::IllegalEscape);
                ch
            }
        }
    }

    fn scan_digits(&mut self, mut ch: Ch, radix: u32, mut n: usize) -> Ch {
        while n > 0 && matches!(ch, Ch::Char(c) if c.is_digit(radix)) {
            ch = self.bump();
            n -= 1;
        }
        if n > 0 {
            self.note(ScanError::IllegalNumericEscape);
        }
        ch
    }
}

fn classify(next: Option<char>) -> Ch {
    match next {
        None => Ch::Eof,
        Some('\0') => Ch::Illegal(ScanError::UnexpectedNull),
        Some(char::REPLACEMENT_CHARACTER) => Ch::Illegal(ScanError::RuneError),
        Some(c) => Ch::Char(c),
    }
}

fn is_quote_char(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

fn is_operator_char(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Go's `isValueRune`: not a comma or space, and graphic (a letter, mark, number,
/// punctuation or symbol), so control and format characters end a value. (No
/// space is in those categories, so the class below needs no exception for them.)
fn is_value_char(c: char) -> bool {
    // std has no general-category lookup; the regex crate's tables do, and this
    // only runs for non-ASCII characters in unquoted values.
    static GRAPHIC: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\A[\p{L}\p{M}\p{N}\p{P}\p{S}]\z").expect("constant pattern compiles")
    });
    if c.is_ascii() {
        c.is_ascii_graphic() && c != ','
    } else {
        GRAPHIC.is_match(c.encode_utf8(&mut [0; 4]))
    }
}

// ---------------------------------------------------------------------------
// Parser

struct Parser<'a, 'b> {
    input: &'a str,
    scanner: Scanner<'a>,
    /// `~=` selectors still allowed in this request; shared by all its filters.
    regex_budget: &'b mut usize,
}

type Parsed<T> = std::result::Result<T, String>;

impl<'a, 'b> Parser<'a, 'b> {
    fn new(input: &'a str, regex_budget: &'b mut usize) -> Self {
        Parser {
            input,
            scanner: Scanner::new(input),
            regex_budget,
        }
    }

    /// selector ("," selector)*; the empty string is containerd's "match all".
    fn filter(mut self) -> Parsed<Vec<Selector>> {
        if self.input.is_empty() {
            return Ok(Vec::new());
        }
        let mut selectors = vec![self.selector()?];
        loop {
            match self.scanner.peek() {
                Ch::Eof => return Ok(selectors),
                Ch::Char(',') => {
                    self.scanner.bump();
                    selectors.push(self.selector()?);
                }
                // Go prints the peeked rune; its illegal pseudo-rune prints as U+FFFD.
                other => {
                    let c = match other {
                        Ch::Char(c) => c,
                        _ => char::REPLACEMENT_CHARACTER,
                    };
                    return Err(self.error(self.scanner.end, format!("unexpected input: {c}")));
                }
            }
        }
    }

    fn selector(&mut self) -> Parsed<Selector> {
        let path = self.fieldpath()?;
        // Only an immediate comma or the end make a presence test: whitespace
        // here must be followed by an operator.
        if matches!(self.scanner.peek(), Ch::Eof | Ch::Char(',')) {
            return Ok(Selector {
                path,
                op: Operator::Present,
            });
        }
        let op = self.scanner.scan(Want::Field);
        let op_pos = op.pos;
        let op = match op.tok {
            Tok::Operator => op.text,
            Tok::Illegal(e) => return Err(self.error(op.pos, e.to_string())),
            _ => {
                return Err(self.error(op.pos, r#"expected an operator ("=="|"!="|"~=")"#.into()));
            }
        };
        let op = match op {
            "==" => Operator::Equal(self.value(false)?),
            "!=" => Operator::NotEqual(self.value(false)?),
            "~=" => {
                if *self.regex_budget == 0 {
                    let msg = format!("too many regular expressions (at most {MAX_REGEXES})");
                    return Err(self.error(op_pos, msg));
                }
                *self.regex_budget -= 1;
                Operator::Matches(self.value(true)?.as_deref().and_then(compile_regex))
            }
            other => return Err(self.error(op_pos, format!("unsupported operator \"{other}\""))),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Parsed<Option<Vec<String>>> {
        let mut path = vec![self.field()?];
        while self.scanner.peek() == Ch::Char('.') {
            self.scanner.bump();
            path.push(self.field()?);
        }
        Ok(path.into_iter().collect())
    }

    fn field(&mut self) -> Parsed<Option<String>> {
        let lexeme = self.scanner.scan(Want::Field);
        match lexeme.tok {
            Tok::Field => Ok(Some(lexeme.text.to_owned())),
            Tok::Quoted => self.unquote(lexeme, false),
            Tok::Illegal(e) => Err(self.error(lexeme.pos, e.to_string())),
            _ => Err(self.error(lexeme.pos, "expected field or quoted".into())),
        }
    }

    /// `regex` allows the `/.../` and `|...|` quotes, which spare a pattern from
    /// escaping its double quotes.
    fn value(&mut self, regex: bool) -> Parsed<Option<String>> {
        let lexeme = self.scanner.scan(Want::Value);
        match lexeme.tok {
            Tok::Value | Tok::Field => Ok(Some(lexeme.text.to_owned())),
            Tok::Quoted => self.unquote(lexeme, regex),
            Tok::Illegal(e) => Err(self.error(lexeme.pos, e.to_string())),
            _ => Err(self.error(lexeme.pos, "expected value or quoted".into())),
        }
    }

    fn unquote(&self, lexeme: Lexeme<'_>, allow_alt_quotes: bool) -> Parsed<Option<String>> {
        if !allow_alt_quotes && !lexeme.text.starts_with('"') {
            return Err(self.error(lexeme.pos, "invalid quote encountered".into()));
        }
        match unquote(lexeme.text) {
            Some(bytes) => Ok(String::from_utf8(bytes).ok()),
            None => Err(self.error(lexeme.pos, "unquoting failed: quote syntax error".into())),
        }
    }

    /// containerd's message: the input with the offending character bracketed.
    fn error(&self, pos: usize, msg: String) -> String {
        let input = self.input;
        let located = input
            .get(pos..)
            .and_then(|rest| rest.chars().next())
            .map(|c| {
                let after = &input[pos + c.len_utf8()..];
                format!("{} >|{c}|< {after}", &input[..pos])
            });
        let located = located.as_deref().unwrap_or(input);
        format!("filters: parse error: [{located}]: {msg}")
    }
}

/// Decodes a quoted literal (`"..."`, `/.../` or `|...|`) with Go's escapes.
/// Returns bytes because `\x` and octal escapes denote raw bytes, which need not
/// form UTF-8; None is Go's "quote syntax error" (e.g. `\400` or `\U00110000`).
fn unquote(literal: &str) -> Option<Vec<u8>> {
    let quote = literal.chars().next()?;
    let body = literal.strip_prefix(quote)?.strip_suffix(quote)?;
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == quote || c == '\n' {
            return None;
        }
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        let escaped = chars.next()?;
        let simple = match escaped {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            // Each quote style may escape only its own delimiter.
            '"' | '/' | '|' if escaped == quote => Some(escaped as u8),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            continue;
        }
        match escaped {
            'x' => out.push(u8::try_from(digits(&mut chars, 16, 2)?).ok()?),
            'u' | 'U' => {
                let n = if escaped == 'u' { 4 } else { 8 };
                let code = digits(&mut chars, 16, n)?;
                if code > u32::from(char::MAX) {
                    return None;
                }
                // Go encodes a surrogate code point as U+FFFD rather than failing.
                let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            '0'..='7' => {
                let first = escaped.to_digit(8)?;
                let rest = digits(&mut chars, 8, 2)?;
                out.push(u8::try_from(first << 6 | rest).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Reads exactly `n` digits in `radix`.
fn digits(chars: &mut std::str::Chars<'_>, radix: u32, n: usize) -> Option<u32> {
    (0..n).try_fold(0u32, |acc, _| {
        Some(acc * radix + chars.next()?.to_digit(radix)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn info(name: &str, parent: Option<&str>, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.map(Into::into),
            kind,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn parse_err<S: AsRef<str>>(filters: &[S]) -> String {
        match Filters::parse(filters) {
            Err(Error::InvalidArgument(msg)) => msg,
            Err(other) => panic!("wrong error class: {other:?}"),
            Ok(f) => panic!("parsed: {f:?}"),
        }
    }

    fn parse(filter: &str) -> Filters {
        Filters::parse(&[filter]).unwrap_or_else(|e| panic!("{filter:?}: {e}"))
    }

    /// The names of `corpus` entries `filters` select.
    fn select<'c>(filters: &[&str], corpus: &'c [Info]) -> Vec<&'c str> {
        let f = Filters::parse(filters).unwrap_or_else(|e| panic!("{filters:?}: {e}"));
        corpus
            .iter()
            .filter(|i| f.matches(*i))
            .map(|i| i.name.as_str())
            .collect()
    }

    // --- containerd's snapshot conformance suite (testsuite.go, checkWalk) ------

    #[test]
    fn conformance_walk_filters() {
        const ROOT: (&str, &str) = ("containerd.io/gc.root", "check-walk");
        let corpus = [
            info("a-np", None, Kind::Active, &[ROOT]),
            info("p", None, Kind::Committed, &[ROOT]),
            info("a", Some("p"), Kind::Active, &[ROOT]),
            info("v", Some("p"), Kind::View, &[ROOT]),
            info("p-wl", None, Kind::Committed, &[("l", "1"), ROOT]),
            info("a-wl", Some("p-wl"), Kind::Active, &[("l", "2"), ROOT]),
            info("v-wl", Some("p-wl"), Kind::View, &[("l", "3"), ROOT]),
            info("a-np-wl", None, Kind::Active, &[("l", "2"), ROOT]),
        ];
        let cases: &[(&[&str], &[&str])] = &[
            (
                &[r#"labels."containerd.io/gc.root"==check-walk"#],
                &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            ),
            (
                &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
                &["a-np", "a", "a-wl", "a-np-wl"],
            ),
            (
                &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
                &["v", "v-wl"],
            ),
            (
                &[r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#],
                &["p", "p-wl"],
            ),
            (&["name==p", "name==a-np-wl"], &["p", "a-np-wl"]),
            (&["name==a-wl,labels.l"], &["a-wl"]),
            (&["parent==p"], &["a", "v"]),
            (
                &[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#],
                &["a", "v", "a-wl", "v-wl"],
            ),
            (&["labels.l"], &["p-wl", "a-wl", "v-wl", "a-np-wl"]),
            (&["labels.l==2"], &["a-wl", "a-np-wl"]),
        ];
        for (filters, want) in cases {
            assert_eq!(select(filters, &corpus), *want, "{filters:?}");
        }
    }

    // --- containerd's filters/filter_test.go, on an adaptor like its own -------

    struct Entry {
        name: &'static str,
        other: &'static str,
        labels: BTreeMap<String, String>,
    }

    /// The test adaptor of filter_test.go: `name` and `other` are present only
    /// when non-empty.
    impl Fields for Entry {
        fn field(&self, path: &[String]) -> Option<&str> {
            let (first, rest) = path.split_first()?;
            let present = |s: &'static str| (!s.is_empty()).then_some(s);
            match first.as_str() {
                "name" => present(self.name),
                "other" => present(self.other),
                "labels" => self.labels.get(&rest.join(".")).map(String::as_str),
                _ => None,
            }
        }
    }

    fn go_corpus() -> Vec<Entry> {
        let e = |name, other, labels: &[(&str, &str)]| Entry {
            name,
            other,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        vec![
            e("foo", "", &[("foo", "true")]),
            e("bar", "", &[]),
            e(
                "foo",
                "",
                &[("foo", "present"), ("more complex label", "present")],
            ),
            e("bar", "", &[("bar", "true")]),
            e(
                "fooer",
                "",
                &[("more complex label with \\ and \"", "present")],
            ),
            e(
                "fooer",
                "",
                &[("more complex label with \\ and \".post", "present")],
            ),
            e("baz", "too complex, yo", &[]),
            e("bazo", "abc", &[]),
            e("compound", "", &[("foo", "omg_asdf.asdf-qwer")]),
        ]
    }

    fn go_select(filter: &str) -> Vec<usize> {
        let f = parse(filter);
        go_corpus()
            .iter()
            .enumerate()
            .filter(|(_, e)| f.matches(*e))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn containerd_filter_test_matches() {
        let all: Vec<usize> = (0..9).collect();
        let cases: &[(&str, &[usize])] = &[
            ("", &all),
            ("name", &all),
            ("labels.foo", &[0, 2, 8]),
            ("labels.foo,name", &[0, 2, 8]),
            ("labels.foo==true", &[0]),
            ("labels.foo==omg_asdf.asdf-qwer", &[8]),
            ("name==bar", &[1, 3]),
            ("name!=bar", &[0, 2, 4, 5, 6, 7, 8]),
            ("name==bar,labels.bar", &[3]),
            ("other==\"too complex, yo\"", &[6]),
            ("other~=[abc]+,name!=foo", &[6, 7]),
            ("other~=/[abc]+/,name!=foo", &[6, 7]),
            ("other~=/[abc]{1,2}/,name!=foo", &[6, 7]),
            ("other~=/[abc]{0,1}\"\\//,name!=foo", &[]),
            ("name==bar,labels.bar==true", &[3]),
            ("name==bar,labels.bar==wrong", &[]),
            (r#"name==foo,labels."more complex label""#, &[2]),
            (
                r#"labels."more complex label with \\ and \""==present"#,
                &[4],
            ),
            (
                r#"labels."more complex label with \\ and \"".post==present"#,
                &[5],
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(go_select(filter), *want, "{filter:?}");
        }
    }

    #[test]
    fn containerd_filter_test_errors() {
        let cases = [
            (
                "labels.|foo|==omg_asdf.asdf-qwer",
                "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered",
            ),
            (
                r#"labels.?"more complex label with \\ and \"".post==present"#,
                r#"filters: parse error: [labels. >|?|< "more complex label with \\ and \"".post==present]: expected field or quoted"#,
            ),
            (
                "name==foo,",
                "filters: parse error: [name==foo,]: expected field or quoted",
            ),
            (
                "labels.",
                "filters: parse error: [labels.]: expected field or quoted",
            ),
            (
                "image~=,id?=?fbaq",
                "filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted",
            ),
            (
                "labels.ns/key==value",
                "filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated",
            ),
            (
                "labels.key==/value",
                "filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated",
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(parse_err(&[filter]), want, "{filter:?}");
        }
    }

    // --- containerd's filters/scanner_test.go ---------------------------------

    /// Drives our scanner the way Go's drives itself: value mode after an
    /// operator, until a separator or value token.
    fn tokens(input: &str) -> Vec<(usize, Tok, &str)> {
        let mut scanner = Scanner::new(input);
        let mut want = Want::Field;
        let mut out = Vec::new();
        loop {
            let l = scanner.scan(want);
            out.push((l.pos, l.tok, l.text));
            match l.tok {
                Tok::Eof => return out,
                Tok::Operator => want = Want::Value,
                Tok::Separator | Tok::Value => want = Want::Field,
                _ => {}
            }
        }
    }

    #[test]
    fn containerd_scanner_test() {
        use Tok::*;
        type Case = (&'static str, &'static [(usize, Tok, &'static str)]);
        let cases: &[Case] = &[
            ("name", &[(0, Field, "name"), (4, Eof, "")]),
            (
                "name==value,foo!=bar",
                &[
                    (0, Field, "name"),
                    (4, Operator, "=="),
                    (6, Value, "value"),
                    (11, Separator, ","),
                    (12, Field, "foo"),
                    (15, Operator, "!="),
                    (17, Value, "bar"),
                    (20, Eof, ""),
                ],
            ),
            (
                "name==value,labels.foo=value,other.bar~=match",
                &[
                    (0, Field, "name"),
                    (4, Operator, "=="),
                    (6, Value, "value"),
                    (11, Separator, ","),
                    (12, Field, "labels"),
                    (18, Separator, "."),
                    (19, Field, "foo"),
                    (22, Operator, "="),
                    (23, Value, "value"),
                    (28, Separator, ","),
                    (29, Field, "other"),
                    (34, Separator, "."),
                    (35, Field, "bar"),
                    (38, Operator, "~="),
                    (40, Value, "match"),
                    (45, Eof, ""),
                ],
            ),
            (
                r"name~=[abc]\+,foo=test",
                &[
                    (0, Field, "name"),
                    (4, Operator, "~="),
                    (6, Value, r"[abc]\+"),
                    (13, Separator, ","),
                    (14, Field, "foo"),
                    (17, Operator, "="),
                    (18, Value, "test"),
                    (22, Eof, ""),
                ],
            ),
            (
                "name~=/[abc]{0,2}/,foo=test",
                &[
                    (0, Field, "name"),
                    (4, Operator, "~="),
                    (6, Quoted, "/[abc]{0,2}/"),
                    (18, Separator, ","),
                    (19, Field, "foo"),
                    (22, Operator, "="),
                    (23, Value, "test"),
                    (27, Eof, ""),
                ],
            ),
            (
                "name~=牛,labels.moo=true",
                &[
                    (0, Field, "name"),
                    (4, Operator, "~="),
                    (6, Value, "牛"),
                    (9, Separator, ","),
                    (10, Field, "labels"),
                    (16, Separator, "."),
                    (17, Field, "moo"),
                    (20, Operator, "="),
                    (21, Value, "true"),
                    (25, Eof, ""),
                ],
            ),
            (
                "name~=|牛|,labels.moo=true",
                &[
                    (0, Field, "name"),
                    (4, Operator, "~="),
                    (6, Quoted, "|牛|"),
                    (11, Separator, ","),
                    (12, Field, "labels"),
                    (18, Separator, "."),
                    (19, Field, "moo"),
                    (22, Operator, "="),
                    (23, Value, "true"),
                    (27, Eof, ""),
                ],
            ),
            (
                r#"name~="asdf\n\tfooo""#,
                &[
                    (0, Field, "name"),
                    (4, Operator, "~="),
                    (6, Quoted, r#""asdf\n\tfooo""#),
                    (20, Eof, ""),
                ],
            ),
            (
                "foo\x00bar",
                &[
                    (0, Field, "foo"),
                    (3, Illegal(ScanError::UnexpectedNull), ""),
                    (4, Field, "bar"),
                    (7, Eof, ""),
                ],
            ),
            (
                "foo = bar    ",
                &[
                    (0, Field, "foo"),
                    (4, Operator, "="),
                    (6, Value, "bar"),
                    (13, Eof, ""),
                ],
            ),
            (
                "compound.labels==punctuated_value.foo-bar",
                &[
                    (0, Field, "compound"),
                    (8, Separator, "."),
                    (9, Field, "labels"),
                    (15, Operator, "=="),
                    (17, Value, "punctuated_value.foo-bar"),
                    (41, Eof, ""),
                ],
            ),
            (
                "interrupted=",
                &[
                    (0, Field, "interrupted"),
                    (11, Operator, "="),
                    (12, Eof, ""),
                ],
            ),
            (
                "doublevalue=value value",
                &[
                    (0, Field, "doublevalue"),
                    (11, Operator, "="),
                    (12, Value, "value"),
                    (18, Field, "value"),
                    (23, Eof, ""),
                ],
            ),
            (
                r#""leading quote".postquote==value"#,
                &[
                    (0, Quoted, r#""leading quote""#),
                    (15, Separator, "."),
                    (16, Field, "postquote"),
                    (25, Operator, "=="),
                    (27, Value, "value"),
                    (32, Eof, ""),
                ],
            ),
            (
                "input==,id!=ff",
                &[
                    (0, Field, "input"),
                    (5, Operator, "=="),
                    (7, Separator, ","),
                    (8, Field, "id"),
                    (10, Operator, "!="),
                    (12, Value, "ff"),
                    (14, Eof, ""),
                ],
            ),
            (
                r"input~=/foo\/bar/,id!=ff",
                &[
                    (0, Field, "input"),
                    (5, Operator, "~="),
                    (7, Quoted, r"/foo\/bar/"),
                    (17, Separator, ","),
                    (18, Field, "id"),
                    (20, Operator, "!="),
                    (22, Value, "ff"),
                    (24, Eof, ""),
                ],
            ),
            (
                "input~=|foo/bar|,id!=ff",
                &[
                    (0, Field, "input"),
                    (5, Operator, "~="),
                    (7, Quoted, "|foo/bar|"),
                    (16, Separator, ","),
                    (17, Field, "id"),
                    (19, Operator, "!="),
                    (21, Value, "ff"),
                    (23, Eof, ""),
                ],
            ),
            (
                "labels.containerd.io/key==value",
                &[
                    (0, Field, "labels"),
                    (6, Separator, "."),
                    (7, Field, "containerd"),
                    (17, Separator, "."),
                    (18, Field, "io"),
                    (20, Illegal(ScanError::NotTerminated), "/key==value"),
                    (31, Eof, ""),
                ],
            ),
            (
                "labels.\"containerd.io\nkey\"==value",
                &[
                    (0, Field, "labels"),
                    (6, Separator, "."),
                    (7, Illegal(ScanError::NotTerminated), "\"containerd.io\n"),
                    (22, Field, "key"),
                    (25, Illegal(ScanError::NotTerminated), "\"==value"),
                    (33, Eof, ""),
                ],
            ),
            (
                r#"labels."\g""#,
                &[
                    (0, Field, "labels"),
                    (6, Separator, "."),
                    (7, Illegal(ScanError::IllegalEscape), r#""\g""#),
                    (11, Eof, ""),
                ],
            ),
            (
                r#"labels."\xaz""#,
                &[
                    (0, Field, "labels"),
                    (6, Separator, "."),
                    (7, Illegal(ScanError::IllegalNumericEscape), r#""\xaz""#),
                    (13, Eof, ""),
                ],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(tokens(input), *want, "{input:?}");
        }
    }

    // --- the snapshot adaptor ---------------------------------------------------

    #[test]
    fn info_fields_follow_adapt_snapshot() {
        let s = |p: &[&str]| p.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let base = info("b", None, Kind::Committed, &[]);
        let child = info("c", Some("b"), Kind::View, &[("a.b", "dotted"), ("", "e")]);
        assert_eq!(base.field(&s(&["name"])), Some("b"));
        assert_eq!(base.field(&s(&["kind"])), Some("committed"));
        assert_eq!(child.field(&s(&["kind"])), Some("view"));
        // An unparented snapshot has parent "" — present, but empty.
        assert_eq!(base.field(&s(&["parent"])), Some(""));
        assert_eq!(child.field(&s(&["parent"])), Some("b"));
        // Only the first component picks the field, as in containerd.
        assert_eq!(child.field(&s(&["name", "x"])), Some("c"));
        assert_eq!(child.field(&s(&["labels", "a", "b"])), Some("dotted"));
        assert_eq!(child.field(&s(&["labels", "a.b"])), Some("dotted"));
        assert_eq!(child.field(&s(&["labels"])), Some("e"));
        assert_eq!(base.field(&s(&["labels"])), None);
        assert_eq!(child.field(&s(&["labels", "a"])), None);
        assert_eq!(child.field(&s(&["created"])), None);
        assert_eq!(child.field(&[]), None);
    }

    #[test]
    fn parent_semantics() {
        let corpus = [
            info("base", None, Kind::Committed, &[]),
            info("child", Some("base"), Kind::Active, &[]),
        ];
        assert_eq!(select(&["parent"], &corpus), ["base", "child"]);
        assert_eq!(select(&["parent==\"\""], &corpus), ["base"]);
        assert_eq!(select(&[r#"parent!="""#], &corpus), ["child"]);
        assert_eq!(select(&["parent~=^$"], &corpus), ["base"]);
    }

    // --- operators ----------------------------------------------------------------

    #[test]
    fn operators_on_present_and_absent_fields() {
        let corpus = [
            info("x", None, Kind::Active, &[("k", "v")]),
            info("y", None, Kind::Active, &[("k", "w")]),
            info("z", None, Kind::Active, &[]),
        ];
        assert_eq!(select(&["labels.k"], &corpus), ["x", "y"]);
        assert_eq!(select(&["labels.k==v"], &corpus), ["x"]);
        // Absent fields count as "" for != and ~=, as in containerd.
        assert_eq!(select(&["labels.k!=v"], &corpus), ["y", "z"]);
        assert_eq!(select(&["labels.k==\"\""], &corpus), Vec::<&str>::new());
        assert_eq!(select(&[r#"labels.k!="""#], &corpus), ["x", "y"]);
        assert_eq!(select(&["labels.k~=^[vw]$"], &corpus), ["x", "y"]);
        assert_eq!(select(&["labels.k~=^$"], &corpus), ["z"]);
        assert_eq!(select(&["labels.k~=/.*/"], &corpus), ["x", "y", "z"]);
        assert_eq!(select(&["nosuchfield"], &corpus), Vec::<&str>::new());
        assert_eq!(select(&["nosuchfield!=a"], &corpus), ["x", "y", "z"]);
    }

    #[test]
    fn and_within_or_across() {
        let corpus = [
            info("a", None, Kind::Active, &[("t", "1")]),
            info("b", None, Kind::View, &[("t", "1")]),
            info("c", None, Kind::Committed, &[("t", "2")]),
        ];
        assert_eq!(select(&["kind==view,labels.t==1"], &corpus), ["b"]);
        assert_eq!(
            select(&["kind==view,labels.t==2"], &corpus),
            Vec::<&str>::new()
        );
        assert_eq!(select(&["kind==view", "labels.t==2"], &corpus), ["b", "c"]);
        assert_eq!(
            select(&["name==a,kind==active,labels.t", "name==zzz"], &corpus),
            ["a"]
        );
        assert_eq!(
            select(&["name==zzz", "name==yyy"], &corpus),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn empty_filters_match_everything() {
        let none: [&str; 0] = [];
        let subject = info("a", None, Kind::Active, &[]);
        for filters in [&none[..], &[""], &["", ""], &["name==other", ""]] {
            let f = Filters::parse(filters).expect("parses");
            assert!(f.matches(&subject), "{filters:?}");
        }
        assert!(Filters::default().matches(&subject));
        assert!(!parse("name==other").matches(&subject));
    }

    #[test]
    fn regex_quoting_styles() {
        let corpus = [
            info("a/b", None, Kind::Active, &[]),
            info("a|b", None, Kind::Active, &[]),
            info("a\"b", None, Kind::Active, &[]),
            info("ab", None, Kind::Active, &[]),
        ];
        assert_eq!(select(&[r"name~=/^a\/b$/"], &corpus), ["a/b"]);
        assert_eq!(select(&[r"name~=|^a/b$|"], &corpus), ["a/b"]);
        // The quote is unescaped before the regex sees it: this is `^a|b$`.
        assert_eq!(
            select(&[r"name~=|^a\|b$|"], &corpus),
            ["a/b", "a|b", "a\"b", "ab"]
        );
        assert_eq!(select(&[r"name~=/^a\x22b$/"], &corpus), ["a\"b"]);
        assert_eq!(select(&[r#"name~=/^a"b$/"#], &corpus), ["a\"b"]);
        assert_eq!(select(&[r#"name~="^a\"b$""#], &corpus), ["a\"b"]);
        // Unquoted, the pattern is taken verbatim: backslashes reach the regex.
        assert_eq!(select(&[r"name~=^a\|b$"], &corpus), ["a|b"]);
        assert_eq!(
            select(&[r"name~=^\w\W\w$"], &corpus),
            ["a/b", "a|b", "a\"b"]
        );
        // Quoted, regex escapes must be doubled, since `\w` is no string escape.
        assert_eq!(select(&[r#"name~="^\\w+$""#], &corpus), ["ab"]);
        assert!(parse_err(&[r#"name~="^\w+$""#]).ends_with("illegal escape sequence"));
        // Octal character codes, as in Go's dialect.
        assert_eq!(select(&[r"name~=^\141\057"], &corpus), ["a/b"]);
        // Matching is a search, not anchored.
        assert_eq!(select(&["name~=b"], &corpus), ["a/b", "a|b", "a\"b", "ab"]);
    }

    #[test]
    fn regex_escapes_follow_go() {
        let corpus = [
            info("٣", None, Kind::Active, &[]),
            info("3", None, Kind::Active, &[]),
            info("é", None, Kind::Active, &[]),
            info("e", None, Kind::Active, &[]),
            info("\u{2003}", None, Kind::Active, &[]),
            info(" ", None, Kind::Active, &[]),
        ];
        assert_eq!(select(&[r"name~=^\d$"], &corpus), ["3"]);
        assert_eq!(
            select(&[r"name~=^\D$"], &corpus),
            ["٣", "é", "e", "\u{2003}", " "]
        );
        assert_eq!(select(&[r"name~=^\w$"], &corpus), ["3", "e"]);
        assert_eq!(select(&[r"name~=^[^\W]$"], &corpus), ["3", "e"]);
        assert_eq!(select(&[r"name~=|^\\s$|"], &corpus), [" "]);
        assert_eq!(
            select(&[r"name~=^\S$"], &corpus),
            ["٣", "3", "é", "e", "\u{2003}"]
        );
        assert_eq!(select(&[r"name~=\b"], &corpus), ["3", "e"]);
        // Escaped backslashes are not mistaken for class escapes.
        let slashes = [info(r"\d", None, Kind::Active, &[])];
        assert_eq!(select(&[r"name~=^\\d$"], &slashes), [r"\d"]);
        // Go's ASCII classes are also small: this fits easily in the size limit,
        // where Unicode `\w{64}` would need megabytes.
        let long = [info(&"a".repeat(64), None, Kind::Active, &[])];
        assert_eq!(select(&[r"name~=^\w{64}$"], &long).len(), 1);
        // Go has no `\u` escape in patterns, and `\<` is a plain character there.
        let other = [info("<é>", None, Kind::Active, &[])];
        assert_eq!(select(&[r"name~=\u00e9"], &other), Vec::<&str>::new());
        assert_eq!(select(&[r"name~=^\<.\>$"], &other), ["<é>"]);
        assert_eq!(go_dialect("plain").as_deref(), Some("plain"));
        assert_eq!(
            go_dialect(r"[^\d]\\w\x41\<\").as_deref(),
            Some(r"[^[0-9]]\\w\x41\x3C\")
        );
    }

    #[test]
    fn alternative_quotes_only_for_regex() {
        for filter in ["name==/x/", "name!=|x|", "labels./x/", "labels.|x|==y"] {
            assert!(
                parse_err(&[filter]).ends_with("invalid quote encountered"),
                "{filter:?}"
            );
        }
    }

    #[test]
    fn bad_regex_matches_nothing() {
        let subject = info("a", None, Kind::Active, &[]);
        for filter in ["name~=[", "name~=(", "name~=/a{2,1}/", r"name~=/\x80/"] {
            let f = parse(filter);
            assert!(!f.matches(&subject), "{filter:?}");
        }
    }

    #[test]
    fn regex_size_is_bounded() {
        let subject = info("a", None, Kind::Active, &[]);
        // Would take far more than the limit; it compiles to "no match" instead.
        let f = parse("name~=(a{1000}){1000}");
        assert!(!f.matches(&subject));
        let f = parse("name~=^[0-9a-f]{64}$|^a$");
        assert!(f.matches(&subject));
    }

    #[test]
    fn regex_count_is_bounded() {
        let one = "name~=a";
        let ok = vec![one; MAX_REGEXES];
        assert!(Filters::parse(&ok).is_ok());
        let mut too_many = ok.clone();
        too_many.push(one);
        assert!(parse_err(&too_many).ends_with(&format!(
            "too many regular expressions (at most {MAX_REGEXES})"
        )));
        let joined = vec![one; MAX_REGEXES + 1].join(",");
        assert!(parse_err(&[joined]).contains("too many regular expressions"));
    }

    // --- quoting and escapes ----------------------------------------------------

    #[test]
    fn quoted_label_keys_with_dots_and_slashes() {
        let corpus = [
            info("a", None, Kind::Active, &[("containerd.io/gc.root", "x")]),
            info(
                "b",
                None,
                Kind::Active,
                &[("containerd.io/gc.ref.snapshot.overlay", "y")],
            ),
            info("c", None, Kind::Active, &[("with space", "z z")]),
        ];
        assert_eq!(
            select(&[r#"labels."containerd.io/gc.root""#], &corpus),
            ["a"]
        );
        // Unquoted dots split the path but are re-joined for labels.
        assert_eq!(
            select(
                &[r#"labels.containerd."io/gc".ref.snapshot.overlay==y"#],
                &corpus
            ),
            ["b"]
        );
        assert_eq!(
            select(
                &[r#"labels."containerd.io/gc.ref"."snapshot.overlay""#],
                &corpus
            ),
            ["b"]
        );
        assert_eq!(select(&[r#"labels."with space"=="z z""#], &corpus), ["c"]);
        assert_eq!(select(&[r#""labels"."with space""#], &corpus), ["c"]);
        // An unquoted slash starts a (here unterminated) quote.
        assert!(parse_err(&["labels.containerd.io/gc.root"]).ends_with("not terminated"));
    }

    #[test]
    fn escapes_decode_like_go() {
        let cases = [
            (r#""\a\b\f\n\r\t\v\\\"""#, "\x07\x08\x0c\n\r\t\x0b\\\""),
            (r#""\x41\101\u00e9\U0001F600""#, "AAé😀"),
            (r#""\xc3\xa9""#, "é"),
            (r#""\uD800""#, "\u{FFFD}"),
            (r#""\377""#, "\u{FFFD}"), // placeholder, checked as bytes below
            (r#""plain""#, "plain"),
            (r#""""#, ""),
            ("\"牛\"", "牛"),
            (r"/a\/b/", "a/b"),
            (r"|a\|b|", "a|b"),
        ];
        for (literal, want) in cases {
            if literal == r#""\377""# {
                assert_eq!(unquote(literal), Some(vec![0xff]));
            } else {
                assert_eq!(
                    unquote(literal),
                    Some(want.as_bytes().to_vec()),
                    "{literal}"
                );
            }
        }
        for bad in [
            r#""\400""#,
            r#""\U00110000""#,
            r#""\'""#,
            r#""\/""#,
            r#""\|""#,
            r#"/\"/"#,
            r#""\x4""#,
            "\"",
            "\"a\nb\"",
            r#""a"b""#,
        ] {
            assert_eq!(unquote(bad), None, "{bad}");
        }
    }

    #[test]
    fn escaped_values_match() {
        let corpus = [
            info("tab\there", None, Kind::Active, &[("é", "q\"uote")]),
            info("plain", None, Kind::Active, &[]),
        ];
        assert_eq!(select(&[r#"name=="tab\there""#], &corpus), ["tab\there"]);
        assert_eq!(select(&[r#"name=="tab\x09here""#], &corpus), ["tab\there"]);
        assert_eq!(select(&[r#"name=="tab\011here""#], &corpus), ["tab\there"]);
        assert_eq!(
            select(&[r#"labels."\u00e9"=="q\"uote""#], &corpus),
            ["tab\there"]
        );
        assert_eq!(select(&[r#"labels."\xc3\xa9""#], &corpus), ["tab\there"]);
        // Unquoted values run to the next comma or space, quotes included, and
        // take backslashes literally.
        assert_eq!(select(&[r"name==tab\there"], &corpus), Vec::<&str>::new());
        assert_eq!(select(&["labels.\"é\"==q\"uote"], &corpus), ["tab\there"]);
    }

    #[test]
    fn invalid_utf8_after_unquoting() {
        let corpus = [info("a", None, Kind::Active, &[("k", "v")])];
        // A raw byte can equal no string, so == never and != always holds.
        assert_eq!(select(&[r#"name=="\xff""#], &corpus), Vec::<&str>::new());
        assert_eq!(select(&[r#"name!="\xff""#], &corpus), ["a"]);
        assert_eq!(select(&[r#"labels."\xff""#], &corpus), Vec::<&str>::new());
        assert_eq!(select(&[r#"labels."\xff"!=v"#], &corpus), ["a"]);
        assert_eq!(select(&[r#"name~="\xff""#], &corpus), Vec::<&str>::new());
    }

    // --- whitespace -------------------------------------------------------------

    #[test]
    fn whitespace_like_go() {
        let subject = info("foo", None, Kind::Active, &[("l", "1")]);
        for ok in [
            "name == foo",
            "  name==foo",
            "name==\tfoo",
            "labels. l",
            "name==foo, labels.l",
            "name ==foo",
            "name\u{3000}==foo",
        ] {
            assert!(parse(ok).matches(&subject), "{ok:?}");
        }
        let cases = [
            (
                "name==foo ",
                "filters: parse error: [name==foo >| |< ]: unexpected input:  ",
            ),
            (
                "labels.l ",
                r#"filters: parse error: [labels.l ]: expected an operator ("=="|"!="|"~=")"#,
            ),
            (" ", "filters: parse error: [ ]: expected field or quoted"),
            (
                "name ,kind",
                r#"filters: parse error: [name  >|,|< kind]: expected an operator ("=="|"!="|"~=")"#,
            ),
            (
                "labels .l",
                r#"filters: parse error: [labels  >|.|< l]: expected an operator ("=="|"!="|"~=")"#,
            ),
            (
                "name==foo bar",
                "filters: parse error: [name==foo >| |< bar]: unexpected input:  ",
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(parse_err(&[filter]), want, "{filter:?}");
        }
    }

    // --- syntax errors ------------------------------------------------------------

    #[test]
    fn syntax_errors_are_precise() {
        let cases = [
            ("name=foo", r#"[name >|=|< foo]: unsupported operator "=""#),
            (
                "name===foo",
                r#"[name >|=|< ==foo]: unsupported operator "===""#,
            ),
            (
                "name=~foo",
                r#"[name >|=|< ~foo]: unsupported operator "=~""#,
            ),
            ("name!foo", r#"[name >|!|< foo]: unsupported operator "!""#),
            ("name==", "[name==]: expected value or quoted"),
            (
                "name==,kind",
                "[name== >|,|< kind]: expected value or quoted",
            ),
            ("name==.x", "[name== >|.|< x]: expected value or quoted"),
            // A leading dot is a separator, so such patterns need quoting.
            ("name~=.*", "[name~= >|.|< *]: expected value or quoted"),
            ("==foo", "[ >|=|< =foo]: expected field or quoted"),
            (",", "[ >|,|< ]: expected field or quoted"),
            ("name,,kind", "[name, >|,|< kind]: expected field or quoted"),
            ("a..b", "[a. >|.|< b]: expected field or quoted"),
            (
                "labels.foo-bar",
                r#"[labels.foo >|-|< bar]: expected an operator ("=="|"!="|"~=")"#,
            ),
            ("é", "[ >|é|< ]: expected field or quoted"),
            (
                r#"name=="foo"bar"#,
                r#"[name=="foo" >|b|< ar]: unexpected input: b"#,
            ),
            (
                "name==\"foo",
                "[name== >|\"|< foo]: quoted literal not terminated",
            ),
            (
                r#"labels."\q""#,
                r#"[labels. >|"|< \q"]: illegal escape sequence"#,
            ),
            (
                r#"labels."\x4""#,
                r#"[labels. >|"|< \x4"]: illegal numeric escape sequence"#,
            ),
            (
                r#"labels."\12""#,
                r#"[labels. >|"|< \12"]: illegal numeric escape sequence"#,
            ),
            (
                r#"labels."\400""#,
                r#"[labels. >|"|< \400"]: unquoting failed: quote syntax error"#,
            ),
            (
                r#"labels."\U00110000""#,
                r#"[labels. >|"|< \U00110000"]: unquoting failed: quote syntax error"#,
            ),
            // The first problem inside a literal wins.
            (
                r#"labels."\q\x""#,
                r#"[labels. >|"|< \q\x"]: illegal escape sequence"#,
            ),
            ("labels.\"a\0\"", "[labels. >|\"|< a\0\"]: unexpected null"),
            ("name\0", "[name >|\0|< ]: unexpected null"),
            ("name==a\0", "[name==a >|\0|< ]: unexpected input: \u{FFFD}"),
            ("\u{FFFD}", "[ >|\u{FFFD}|< ]: rune error"),
        ];
        for (filter, want) in cases {
            let want = format!("filters: parse error: {want}");
            assert_eq!(parse_err(&[filter]), want, "{filter:?}");
        }
    }

    #[test]
    fn first_bad_filter_is_reported() {
        let msg = parse_err(&["name==a", "kind=", "labels.x==y", "(("]);
        assert_eq!(
            msg,
            "filters: parse error: [kind >|=|< ]: unsupported operator \"=\""
        );
        let err = Filters::parse(&["name=="]).expect_err("invalid");
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert_eq!(
            err.to_string(),
            "invalid argument: filters: parse error: [name==]: expected value or quoted"
        );
    }

    #[test]
    fn odd_but_valid_like_go() {
        let subject = info("x=y", None, Kind::Active, &[("1", "v")]);
        // Operator characters inside a value are fine once the value started.
        assert!(parse("name==x=y").matches(&subject));
        // Fields may start with a digit.
        assert!(parse("labels.1==v").matches(&subject));
        // After an operator, even a control character starts a value.
        assert!(!parse("name==\u{1}x").matches(&subject));
        // A value ends at a control or format character.
        assert!(parse_err(&["name==x\u{200b}y"]).ends_with("unexpected input: \u{200b}"));
    }

    #[test]
    fn error_marks_whole_multibyte_character() {
        assert_eq!(
            parse_err(&["name牛"]),
            r#"filters: parse error: [name >|牛|< ]: expected an operator ("=="|"!="|"~=")"#
        );
    }

    // --- robustness -----------------------------------------------------------------

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn check(filters: &[String]) {
            match Filters::parse(filters) {
                Ok(f) => {
                    let subject = info("n", Some("p"), Kind::Active, &[("k", "v")]);
                    let _ = f.matches(&subject);
                }
                Err(Error::InvalidArgument(msg)) => assert!(msg.starts_with("filters: ")),
                Err(other) => panic!("wrong error class: {other:?}"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_strings_never_panic(filters in prop::collection::vec(any::<String>(), 0..4)) {
                check(&filters);
            }

            /// Mostly the syntax's own characters, to reach deep into the parser.
            #[test]
            fn filter_like_strings_never_panic(
                filters in prop::collection::vec(
                    r#"[a-z_.,=!~"/|\\ \t0-7xuU{}()\[\]*+?^$\x00\u{FFFD}牛é-]{0,40}"#,
                    0..4,
                )
            ) {
                check(&filters);
            }
        }
    }
}
