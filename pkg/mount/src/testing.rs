//! The guard of tests that need root. Such a test is marked
//! `#[ignore = "needs root: <what for>"]`, so a plain `cargo test` lists it as
//! ignored with the reason; run on purpose (`--ignored`, `--include-ignored`) it
//! calls this first, and fails, naming what is missing, rather than passing
//! without having run.

/// Panics unless the test runs as root; `what` says what root is needed for.
#[track_caller]
pub fn require_root(what: &str) {
    let euid = rustix::process::geteuid();
    assert!(
        euid.is_root(),
        "this test needs root ({what}) but runs as uid {}",
        euid.as_raw()
    );
}
