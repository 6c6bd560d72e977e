//! The parser: tokens to selectors, refusing in containerd's own wording.

use super::MAX_REGEXES;
use super::matcher::{Operator, Selector, compile_regex};
use super::scanner::{Ch, Lexeme, Scanner, Tok, Want};

pub(super) struct Parser<'a, 'b> {
    pub(super) input: &'a str,
    pub(super) scanner: Scanner<'a>,
    /// `~=` selectors still allowed in this request; shared by all its filters.
    pub(super) regex_budget: &'b mut usize,
}

pub(super) type Parsed<T> = std::result::Result<T, String>;

impl<'a, 'b> Parser<'a, 'b> {
    pub(super) fn new(input: &'a str, regex_budget: &'b mut usize) -> Self {
        Parser {
            input,
            scanner: Scanner::new(input),
            regex_budget,
        }
    }

    /// selector ("," selector)*; the empty string is containerd's "match all".
    pub(super) fn filter(mut self) -> Parsed<Vec<Selector>> {
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

    pub(super) fn selector(&mut self) -> Parsed<Selector> {
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

    pub(super) fn fieldpath(&mut self) -> Parsed<Option<Vec<String>>> {
        let mut path = vec![self.field()?];
        while self.scanner.peek() == Ch::Char('.') {
            self.scanner.bump();
            path.push(self.field()?);
        }
        Ok(path.into_iter().collect())
    }

    pub(super) fn field(&mut self) -> Parsed<Option<String>> {
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
    pub(super) fn value(&mut self, regex: bool) -> Parsed<Option<String>> {
        let lexeme = self.scanner.scan(Want::Value);
        match lexeme.tok {
            Tok::Value | Tok::Field => Ok(Some(lexeme.text.to_owned())),
            Tok::Quoted => self.unquote(lexeme, regex),
            Tok::Illegal(e) => Err(self.error(lexeme.pos, e.to_string())),
            _ => Err(self.error(lexeme.pos, "expected value or quoted".into())),
        }
    }

    pub(super) fn unquote(
        &self,
        lexeme: Lexeme<'_>,
        allow_alt_quotes: bool,
    ) -> Parsed<Option<String>> {
        if !allow_alt_quotes && !lexeme.text.starts_with('"') {
            return Err(self.error(lexeme.pos, "invalid quote encountered".into()));
        }
        match unquote(lexeme.text) {
            Some(bytes) => Ok(String::from_utf8(bytes).ok()),
            None => Err(self.error(lexeme.pos, "unquoting failed: quote syntax error".into())),
        }
    }

    /// containerd's message: the input with the offending character bracketed.
    pub(super) fn error(&self, pos: usize, msg: String) -> String {
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
pub(super) fn unquote(literal: &str) -> Option<Vec<u8>> {
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
pub(super) fn digits(chars: &mut std::str::Chars<'_>, radix: u32, n: usize) -> Option<u32> {
    (0..n).try_fold(0u32, |acc, _| {
        Some(acc * radix + chars.next()?.to_digit(radix)?)
    })
}
