//! Deferred deletion. containerd holds its garbage-collection lock across a proxy's
//! Remove, so Remove only renames storage into `trash/`; this thread deletes it.
//! Anything left in `trash/` by a crash is picked up at the next start.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use rustlayer_core::sync::{lock, wait};
use tracing::{debug, warn};

#[derive(Debug, Default)]
struct Signal {
    wake: Mutex<bool>,
    cond: Condvar,
    busy: Mutex<bool>,
    idle: Condvar,
    stop: AtomicBool,
}

#[derive(Debug)]
pub(crate) struct Reaper {
    signal: Arc<Signal>,
}

impl Reaper {
    pub fn start(trash: PathBuf) -> std::io::Result<Reaper> {
        let signal = Arc::new(Signal::default());
        let worker = Arc::clone(&signal);
        thread::Builder::new()
            .name("rustlayer-reaper".into())
            .spawn(move || run(&trash, &worker))?;
        let reaper = Reaper { signal };
        reaper.wake();
        Ok(reaper)
    }

    pub fn wake(&self) {
        let mut wake = lock(&self.signal.wake);
        *wake = true;
        self.signal.cond.notify_one();
    }

    /// Blocks until everything handed over so far is deleted (for shutdown and tests).
    pub fn wait_idle(&self) {
        let mut busy = lock(&self.signal.busy);
        while *busy || *lock(&self.signal.wake) {
            busy = wait(&self.signal.idle, busy);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.signal.stop.store(true, Ordering::SeqCst);
        self.wake();
    }
}

fn run(trash: &Path, signal: &Signal) {
    loop {
        {
            let mut wake = lock(&signal.wake);
            while !*wake {
                wake = wait(&signal.cond, wake);
            }
            *wake = false;
            *lock(&signal.busy) = true;
        }
        if signal.stop.load(Ordering::SeqCst) {
            *lock(&signal.busy) = false;
            signal.idle.notify_all();
            return;
        }
        empty(trash, signal);
        *lock(&signal.busy) = false;
        signal.idle.notify_all();
    }
}

fn empty(trash: &Path, signal: &Signal) {
    let entries = match fs::read_dir(trash) {
        Ok(entries) => entries,
        Err(err) => {
            warn!(path = %trash.display(), %err, "cannot list trash");
            return;
        }
    };
    for entry in entries.flatten() {
        if signal.stop.load(Ordering::SeqCst) {
            return;
        }
        let path = entry.path();
        let result = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match result {
            Ok(()) => debug!(path = %path.display(), "reaped"),
            Err(err) => warn!(path = %path.display(), %err, "cannot delete detached storage"),
        }
    }
}
