//! Malformed List filters are InvalidArgument.

use rustlayer_e2e::support::sorted_infos;
use rustlayer_e2e::{Daemon, require_root};
use tonic::Code;

use crate::state::populate;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: the daemon mounts overlayfs"]
async fn malformed_filters_are_invalid_argument() {
    require_root();
    let mut daemon = Daemon::start();
    let c = daemon.client().await;
    populate(&c).await;
    let before = sorted_infos(&c).await;

    // Each is outside containerd's grammar (filters/parser.go):
    //   selectors := selector ("," selector)*
    //   selector  := fieldpath (operator value)
    //   operator  := "==" | "!=" | "~="
    //   value     := quoted | [^\s,]+
    let malformed = [
        "==x",
        "!=x",
        "~=x",
        ",",
        ",,",
        "kind==",
        "kind!=",
        "kind~=",
        "kind==active,",
        ",kind==active",
        "kind==active,,kind==view",
        ".kind",
        "kind.",
        "kind..name",
        "labels.\"unterminated",
        "labels.\"a\"==\"unterminated",
        "kind==\"bad escape \\q\"",
        "kind active",
        "kind==active kind==view",
        "\"",
        "\0",
        "kind\0==active",
        "*",
        "kind===",
        "labels.==x",
    ];
    let mut wrong = Vec::new();
    for f in malformed {
        // Alone, and ORed with a valid filter: one bad filter spoils the request.
        for filters in [vec![f], vec!["kind==active", f]] {
            match c.list(&filters).await {
                Err(s) if s.code() == Code::InvalidArgument => {}
                Err(s) => wrong.push(format!("{filters:?}: got {:?} ({})", s.code(), s.message())),
                Ok(infos) => wrong.push(format!(
                    "{filters:?}: accepted, listed {} snapshots",
                    infos.len()
                )),
            }
        }
    }
    // A megabyte of filter is refused or answered, never a crash or Internal.
    let long = format!("labels.\"{}\"==x", "a".repeat(1 << 20));
    if let Err(s) = c.list(&[&long]).await {
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    }
    assert_eq!(sorted_infos(&c).await, before);
    assert!(
        wrong.is_empty(),
        "malformed filters not refused with InvalidArgument:\n{}",
        wrong.join("\n")
    );
    drop(c);
    daemon.stop();
}
