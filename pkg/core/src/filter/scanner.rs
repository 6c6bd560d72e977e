//! The scanner: characters to tokens, with Go's scanner's positions, quoting and
//! illegal characters, so errors read as containerd's do.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

/// One character as the scanner sees it. Go's scanner turns NUL and U+FFFD (its
/// decoding-error marker) into an "illegal" pseudo-character; keeping that makes
/// our error positions and messages line up with containerd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ch {
    Eof,
    Illegal(ScanError),
    Char(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanError {
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
pub(super) enum Tok {
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
pub(super) struct Lexeme<'a> {
    pub(super) pos: usize,
    pub(super) tok: Tok,
    /// The token's source text; empty for `Eof`, `Other` and a bare illegal
    /// character, as in Go.
    pub(super) text: &'a str,
}

/// What the parser expects next. Go keeps this as scanner state set by an
/// operator; here the parser simply says so, since only `value` ever asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Field,
    Value,
}

pub(super) struct Scanner<'a> {
    pub(super) input: &'a str,
    /// Byte offset of the character most recently read (Go's `pos`).
    pub(super) start: usize,
    /// Byte offset just past it (Go's `ppos`); where `peek` looks.
    pub(super) end: usize,
    /// First error met while scanning the current token. Go keeps the first error
    /// of the whole scan, but any error ends the parse at that token, so scoping
    /// it to the token gives the same messages.
    pub(super) err: Option<ScanError>,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(input: &'a str) -> Self {
        Scanner {
            input,
            start: 0,
            end: 0,
            err: None,
        }
    }

    pub(super) fn peek(&self) -> Ch {
        classify(self.input[self.end..].chars().next())
    }

    pub(super) fn bump(&mut self) -> Ch {
        let next = self.input[self.end..].chars().next();
        self.start = self.end;
        self.end += next.map_or(0, char::len_utf8);
        let ch = classify(next);
        if let Ch::Illegal(e) = ch {
            self.note(e);
        }
        ch
    }

    pub(super) fn note(&mut self, e: ScanError) {
        self.err.get_or_insert(e);
    }

    pub(super) fn eat_while(&mut self, pred: impl Fn(char) -> bool) {
        while let Ch::Char(c) = self.peek() {
            if !pred(c) {
                break;
            }
            self.bump();
        }
    }

    pub(super) fn scan(&mut self, want: Want) -> Lexeme<'a> {
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
    pub(super) fn scan_quoted(&mut self, quote: char) -> std::result::Result<(), ScanError> {
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
    pub(super) fn scan_escape(&mut self, quote: char) -> Ch {
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

    pub(super) fn scan_digits(&mut self, mut ch: Ch, radix: u32, mut n: usize) -> Ch {
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

pub(super) fn classify(next: Option<char>) -> Ch {
    match next {
        None => Ch::Eof,
        Some('\0') => Ch::Illegal(ScanError::UnexpectedNull),
        Some(char::REPLACEMENT_CHARACTER) => Ch::Illegal(ScanError::RuneError),
        Some(c) => Ch::Char(c),
    }
}

pub(super) fn is_quote_char(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

pub(super) fn is_operator_char(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

pub(super) fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Go's `isValueRune`: not a comma or space, and graphic (a letter, mark, number,
/// punctuation or symbol), so control and format characters end a value. (No
/// space is in those categories, so the class below needs no exception for them.)
pub(super) fn is_value_char(c: char) -> bool {
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
