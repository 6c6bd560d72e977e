//! A time-bounded mutation fuzzer of containerd's List filter syntax, as parsed by
//! `Filters::parse`: every input, valid or not, must come back as a filter or as an
//! error, never a panic, the same every time; a filter that parses must evaluate
//! on any snapshot without panicking.
//!
//! `RUSTLAYER_FUZZ_SECONDS` (default 10) bounds it, `RUSTLAYER_FUZZ_SEED` replays a
//! run. Inputs come from a corpus of valid and near-valid filters, mutated by
//! characters and by bytes (a cut through a multi-byte character arrives as the
//! U+FFFD a gRPC string decoder would make of it), and from a small grammar.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant, SystemTime};

use rustlayer_core::filter::Fields;
use rustlayer_core::{Error, Filters, Info, Kind};

const CORPUS: &[&str] = &[
    "",
    "kind==committed",
    "kind!=active",
    "name==foo",
    "name~=^foo.*bar$",
    "parent",
    "parent!=\"\"",
    "labels.a==b",
    "labels.\"a.b\"==c",
    "labels.\"containerd.io/gc.root\"",
    "labels.x~=\"[0-9]+\"",
    "name==a,kind==view",
    "name==\"with \\\"escapes\\\" and \\\\\"",
    "labels.`raw`==`v`",
    "name~=/slashes/",
    "name==ünïcödé,labels.ключ==значение",
    "labels.a.b.c==d",
    "kind==committed,,name==x",
    "name==",
    "==x",
    "name=x",
    "name~=(",
    "labels.\"unterminated==x",
    "name ==  spaced ",
    "name==\"\\x41\\101\\u00e9\\U0001F600\\a\\v\"",
    "labels.\"\\xff\\377\"==x",
    "name==\"\\q\"",
    "name==\"\\x4\"",
    "name==\"\\u12\"",
    "name==\"\\400\"",
    "name~=/^a\\/b$/",
    "name~=|a|b|",
    "name~=\"\\d+\\w*\\s\\b\\<\\u00e9\"",
    "name~=(a{1000}){1000}",
    "name~=((((((((((((((((((((a))))))))))))))))))))",
    "name~=[[:alpha:]]+,name~=(?i)FOO,name~=(?x) a b",
    "name~=a,name~=b,name~=c,name~=d,name~=e,name~=f,name~=g,name~=h,name~=i",
    "labels.\"a\nb\"==c",
    "name==\u{0}",
    "name==\u{fffd}",
    "  kind==view  ",
    "kind==committed\n",
];

const ALPHABET: &[&str] = &[
    "name",
    "parent",
    "kind",
    "labels",
    ".",
    ",",
    "==",
    "!=",
    "~=",
    "=",
    "!",
    "~",
    "\"",
    "`",
    "\\",
    " ",
    "\t",
    "a",
    "b",
    "é",
    "\u{0}",
    "(",
    ")",
    "[",
    "]",
    "*",
    "+",
    "?",
    "^",
    "$",
    "{",
    "}",
    "|",
    "/",
    "committed",
    "active",
    "view",
    "0",
    "9",
    "\\x",
    "\\xff",
    "\\377",
    "\\u00e9",
    "\\U0010FFFF",
    "\\U00110000",
    "\n",
    "\u{fffd}",
    "\u{10ffff}",
    "日本",
    "~=/",
    "~=|",
    "(?i)",
    "{1000}",
];

/// xorshift64*: deterministic, so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Character-level mutations keep the input valid UTF-8, as a gRPC string is.
fn mutate(rng: &mut Rng, input: &str) -> String {
    let mut chars: Vec<char> = input.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(7) {
            0 if !chars.is_empty() => {
                let end = (at + rng.below(4)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 => {
                let piece = ALPHABET[rng.below(ALPHABET.len())];
                chars.splice(at..at, piece.chars());
            }
            2 if !chars.is_empty() => {
                let i = rng.below(chars.len());
                chars[i] = char::from_u32(rng.below(0x2_0000) as u32).unwrap_or('\u{fffd}');
            }
            3 => {
                let other = CORPUS[rng.below(CORPUS.len())];
                let cut = rng.below(chars.len() + 1);
                chars.truncate(cut);
                chars.extend(other.chars().skip(rng.below(other.len() + 1)));
            }
            4 if !chars.is_empty() => {
                let start = rng.below(chars.len());
                let end = (start + 1 + rng.below(8)).min(chars.len());
                let copy: Vec<char> = chars[start..end].to_vec();
                for _ in 0..1 + rng.below(40) {
                    chars.splice(at..at, copy.iter().copied());
                }
            }
            5 => chars.truncate(at),
            _ => chars.insert(at, char::from(b' ' + rng.below(95) as u8)),
        }
    }
    chars.into_iter().collect()
}

/// Byte-level mutations, including cuts through multi-byte characters; the result
/// is decoded lossily, as a protobuf string with broken UTF-8 could never reach the
/// parser any other way.
fn mutate_bytes(rng: &mut Rng, input: &str) -> String {
    let mut bytes = input.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = [0x00, 0xff, 0x80, 0x7f, 0xc3, 0xe2, 0xf0][rng.below(7)];
            }
            2 => {
                let n = 1 + rng.below(4);
                let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, noise);
            }
            3 if !bytes.is_empty() => {
                let end = (at + 1 + rng.below(4)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            4 => bytes.truncate(at),
            _ => {
                // The leading bytes of a character with its continuation missing.
                let c = ['é', '€', '😀', '\u{10ffff}'][rng.below(4)];
                let mut buf = [0; 4];
                let encoded = c.encode_utf8(&mut buf).as_bytes();
                let keep = 1 + rng.below(encoded.len() - 1);
                bytes.splice(at..at, encoded[..keep].iter().copied());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// From the grammar: selectors joined by commas, each a field path, maybe an
/// operator and a value, plain or quoted.
fn generate(rng: &mut Rng) -> String {
    let mut out = String::new();
    for i in 0..1 + rng.below(4) {
        if i > 0 {
            out.push(',');
        }
        out.push_str(
            [
                "name",
                "parent",
                "kind",
                "labels",
                "labels.a",
                "labels.\"x.y\"",
            ][rng.below(6)],
        );
        for _ in 0..rng.below(3) {
            out.push('.');
            out.push_str(["a", "b", "\"c.d\"", "`e`"][rng.below(4)]);
        }
        if rng.below(5) > 0 {
            out.push_str(["==", "!=", "~="][rng.below(3)]);
            let value = [
                "committed",
                "x",
                "",
                "^a+$",
                "[",
                "a b",
                "\\x41",
                "é",
                "a,b",
                "\\",
            ][rng.below(10)];
            match rng.below(5) {
                0 => out.push_str(value),
                1 => out.push_str(&format!("{value:?}")),
                2 => out.push_str(&format!("\"{value}\"")),
                3 => out.push_str(&format!("/{value}/")),
                _ => out.push_str(&format!("`{value}`")),
            }
        }
    }
    out
}

/// A subject where every field path, however deep or odd, is present with the
/// same value, so every selector gets something to compare.
struct EveryField(&'static str);

impl Fields for EveryField {
    fn field(&self, _: &[String]) -> Option<&str> {
        Some(self.0)
    }
}

/// A subject with no fields at all.
struct NoField;

impl Fields for NoField {
    fn field(&self, _: &[String]) -> Option<&str> {
        None
    }
}

fn subjects() -> Vec<Info> {
    let now = SystemTime::now();
    let info = |name: &str, parent: Option<&str>, kind, labels: &[(&str, &str)]| Info {
        name: name.into(),
        parent: parent.map(str::to_owned),
        kind,
        created: now,
        updated: now,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    vec![
        info("foo", None, Kind::Committed, &[]),
        info(
            "foobar",
            Some("foo"),
            Kind::Active,
            &[("a", "b"), ("a.b", "c")],
        ),
        info("x", Some("foobar"), Kind::View, &[("x.y", "committed")]),
    ]
}

#[test]
fn random_filters_parse_or_fail_cleanly_and_evaluate_without_panics() {
    let seconds = env_u64("RUSTLAYER_FUZZ_SECONDS", 10);
    let seed = env_u64("RUSTLAYER_FUZZ_SEED", 0x0f11_7e25);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let infos = subjects();
    let others = [EveryField(""), EveryField("committed"), EveryField("x")];
    let subjects: Vec<(String, &dyn Fields)> = infos
        .iter()
        .map(|i| (i.name.clone(), i as &dyn Fields))
        .chain(
            others
                .iter()
                .map(|e| (format!("every field {:?}", e.0), e as &dyn Fields)),
        )
        .chain([("no field".to_owned(), &NoField as &dyn Fields)])
        .collect();
    let started = Instant::now();
    let (mut tried, mut accepted) = (0u64, 0u64);
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut slowest = (Duration::ZERO, Vec::new());

    while started.elapsed() < Duration::from_secs(seconds) {
        let count = 1 + rng.below(3);
        let filters: Vec<String> = (0..count)
            .map(|_| {
                let start = CORPUS[rng.below(CORPUS.len())];
                match rng.below(6) {
                    0 | 1 => generate(&mut rng),
                    2 => mutate_bytes(&mut rng, start),
                    _ => mutate(&mut rng, start),
                }
            })
            .collect();
        tried += 1;
        let parse_started = Instant::now();
        let parsed = catch_unwind(AssertUnwindSafe(|| Filters::parse(&filters)))
            .unwrap_or_else(|_| panic!("parse panicked on {filters:?} (seed {seed:#x})"));
        let took = parse_started.elapsed();
        if took > slowest.0 {
            slowest = (took, filters.clone());
        }
        let again = Filters::parse(&filters);
        // Debug shows the parsed selectors (and each pattern's source): the same
        // input must give the same filter, or the same refusal word for word.
        assert_eq!(
            format!("{parsed:?}"),
            format!("{again:?}"),
            "parse is not deterministic on {filters:?} (seed {seed:#x})"
        );
        match (parsed, again) {
            (Ok(parsed), Ok(again)) => {
                accepted += 1;
                for (name, subject) in &subjects {
                    let matched = catch_unwind(AssertUnwindSafe(|| parsed.matches(*subject)))
                        .unwrap_or_else(|_| {
                            panic!("matches panicked: {filters:?} on {name} (seed {seed:#x})")
                        });
                    assert_eq!(
                        matched,
                        again.matches(*subject),
                        "{filters:?} matches {name} one way, then the other (seed {seed:#x})"
                    );
                }
            }
            (Err(err), Err(_)) => {
                // A syntax error is the client's: InvalidArgument, nothing graver.
                assert!(
                    matches!(err, Error::InvalidArgument(_)),
                    "{filters:?} refused as {err:?} (seed {seed:#x})"
                );
                let message = err.to_string();
                assert!(
                    !message.is_empty(),
                    "an empty error for {filters:?} (seed {seed:#x})"
                );
                // The kind of refusal: the reason after the located input, without
                // the character or operator it quotes.
                let reason = message
                    .rsplit_once("]: ")
                    .map_or(message.as_str(), |(_, r)| r);
                let kind = reason
                    .split([':', '"'])
                    .next()
                    .unwrap_or("")
                    .trim_end_matches([' ', '('])
                    .to_owned();
                *errors.entry(kind).or_default() += 1;
            }
            _ => unreachable!("the Debug forms above agree"),
        }
    }
    let elapsed = started.elapsed();
    let mut kinds: Vec<_> = errors.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    println!(
        "filter inputs tried: {tried} in {elapsed:.1?} ({:.0}/s, seed {seed:#x}); accepted {accepted}, rejected {}; slowest parse {:.1?} on {:?}; refusals: {kinds:?}",
        tried as f64 / elapsed.as_secs_f64(),
        tried - accepted,
        slowest.0,
        slowest
            .1
            .iter()
            .map(|f| f.chars().take(80).collect::<String>())
            .collect::<Vec<_>>(),
    );
    assert!(
        accepted > 0 && accepted < tried,
        "the corpus and mutations must hit both sides"
    );
}
