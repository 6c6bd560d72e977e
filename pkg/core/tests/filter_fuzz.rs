//! A time-bounded mutation fuzzer of containerd's List filter syntax, as parsed by
//! `Filters::parse`: every input, valid or not, must come back as a filter or as an
//! error, never a panic, the same every time; a filter that parses must evaluate
//! on any snapshot without panicking.
//!
//! `RUSTLAYER_FUZZ_SECONDS` (default 10) bounds it, `RUSTLAYER_FUZZ_SEED` replays a
//! run. Inputs come from a corpus of valid and near-valid filters, mutated by
//! characters and bytes, and from a small grammar.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant, SystemTime};

use rustlayer_core::{Filters, Info, Kind};

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
            let value = ["committed", "x", "", "^a+$", "[", "a b"][rng.below(6)];
            match rng.below(3) {
                0 => out.push_str(value),
                1 => out.push_str(&format!("{value:?}")),
                _ => out.push_str(&format!("`{value}`")),
            }
        }
    }
    out
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
    let subjects = subjects();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut tried, mut accepted) = (0u64, 0u64);
    let mut errors: HashMap<String, u64> = HashMap::new();

    while Instant::now() < deadline {
        let count = 1 + rng.below(3);
        let filters: Vec<String> = (0..count)
            .map(|_| {
                if rng.below(3) == 0 {
                    generate(&mut rng)
                } else {
                    let seed_input = CORPUS[rng.below(CORPUS.len())];
                    mutate(&mut rng, seed_input)
                }
            })
            .collect();
        tried += 1;
        let parsed = catch_unwind(AssertUnwindSafe(|| Filters::parse(&filters)))
            .unwrap_or_else(|_| panic!("parse panicked on {filters:?} (seed {seed:#x})"));
        let again = Filters::parse(&filters);
        assert_eq!(
            parsed.is_ok(),
            again.is_ok(),
            "parse is not deterministic on {filters:?}"
        );
        match parsed {
            Ok(parsed) => {
                accepted += 1;
                for subject in &subjects {
                    let matched = catch_unwind(AssertUnwindSafe(|| parsed.matches(subject)))
                        .unwrap_or_else(|_| {
                            panic!(
                                "matches panicked: {filters:?} on {} (seed {seed:#x})",
                                subject.name
                            )
                        });
                    let reparsed = again.as_ref().expect("parsed twice");
                    assert_eq!(
                        matched,
                        reparsed.matches(subject),
                        "{filters:?} matches {} one way, then the other",
                        subject.name
                    );
                }
            }
            Err(err) => {
                let message = err.to_string();
                assert!(!message.is_empty(), "an empty error for {filters:?}");
                // The kind of refusal: its last clause, without the input.
                let kind: String = message
                    .rsplit(": ")
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(40)
                    .collect();
                *errors.entry(kind).or_default() += 1;
            }
        }
    }
    let mut kinds: Vec<_> = errors.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    println!(
        "filter inputs tried: {tried} in {seconds} s (seed {seed:#x}); accepted {accepted}, rejected {}; refusals: {kinds:?}",
        tried - accepted
    );
    assert!(
        accepted > 0 && accepted < tried,
        "the corpus and mutations must hit both sides"
    );
}
