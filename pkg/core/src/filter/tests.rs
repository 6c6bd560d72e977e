use std::collections::BTreeMap;
use std::time::SystemTime;

use super::matcher::go_dialect;
use super::parser::unquote;
use super::scanner::{ScanError, Scanner, Tok, Want};
use super::*;
use crate::Kind;

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
