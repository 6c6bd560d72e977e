//! Deferred deletion. containerd holds its garbage-collection lock across a proxy's
//! Remove, so a backend's Remove only puts its storage out of the way and hands the
//! deletion to a [`Reaper`]: one thread per backend that runs the backend's job on
//! each item handed over, in order. What a job leaves undone (a crash, an error) the
//! backend finds again at its next start or Cleanup.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

use crate::sync::{lock, wait};

/// A thread running one job on each item handed over: a directory to empty, a
/// device to delete.
#[derive(Debug)]
pub struct Reaper<T> {
    shared: Arc<Shared<T>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    work: Condvar,
    idle: Condvar,
    cancelled: AtomicBool,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    busy: bool,
    closed: bool,
}

/// What a job sees of its reaper: whether the reaper is being dropped, for a long
/// job to stop early and leave the rest to the next start.
#[derive(Debug)]
pub struct Cancel<'a>(&'a AtomicBool);

impl Cancel<'_> {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl<T: PartialEq + Send + 'static> Reaper<T> {
    /// Starts the thread `name`, which runs `job` on every item handed over.
    pub fn start(
        name: &str,
        mut job: impl FnMut(T, &Cancel<'_>) + Send + 'static,
    ) -> std::io::Result<Reaper<T>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                busy: false,
                closed: false,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            cancelled: AtomicBool::new(false),
        });
        let worker = Arc::clone(&shared);
        let handle = thread::Builder::new().name(name.into()).spawn(move || {
            while let Some(item) = worker.next() {
                // A panicking job (its message already printed) costs its item, not
                // the thread: later items and wait_idle still see a live reaper.
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    job(item, &Cancel(&worker.cancelled));
                }));
                lock(&worker.state).busy = false;
                worker.idle.notify_all();
            }
        })?;
        Ok(Reaper {
            shared,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Queues `item`, unless an equal one is still waiting (it will do for both).
    /// Gives it back once the reaper has finished: the caller then does the job
    /// itself.
    pub fn hand_over(&self, item: T) -> Result<(), T> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Err(item);
        }
        if !state.queue.contains(&item) {
            state.queue.push_back(item);
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Blocks until every item handed over so far is done (shutdown, tests).
    pub fn wait_idle(&self) {
        let mut state = lock(&self.shared.state);
        while state.busy || !state.queue.is_empty() {
            state = wait(&self.shared.idle, state);
        }
    }

    /// Does what is queued, then stops the thread and waits for it. Later items are
    /// given back by [`Reaper::hand_over`].
    pub fn finish(&self) {
        self.close();
        let worker = lock(&self.worker).take();
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

impl<T> Reaper<T> {
    fn close(&self) {
        lock(&self.shared.state).closed = true;
        self.shared.work.notify_all();
    }
}

impl<T> Shared<T> {
    /// The next item, marking the reaper busy; None once closed and done.
    fn next(&self) -> Option<T> {
        let mut state = lock(&self.state);
        loop {
            if let Some(item) = state.queue.pop_front() {
                state.busy = true;
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = wait(&self.work, state);
        }
    }
}

/// Dropping a reaper does not wait for it: the thread runs the items still queued
/// with [`Cancel::requested`] true, so a job that can stop early does.
impl<T> Drop for Reaper<T> {
    fn drop(&mut self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A reaper whose job records each item, after waiting for `gate` to let it.
    fn recording() -> (Reaper<u32>, Arc<Mutex<Vec<u32>>>, mpsc::Sender<()>) {
        let done = Arc::new(Mutex::new(Vec::new()));
        let (gate, opened) = mpsc::channel::<()>();
        let seen = Arc::clone(&done);
        let opened = Mutex::new(opened);
        let reaper = Reaper::start("test-reaper", move |item: u32, _: &Cancel<'_>| {
            lock(&opened).recv().unwrap();
            lock(&seen).push(item);
        })
        .unwrap();
        (reaper, done, gate)
    }

    #[test]
    fn jobs_run_in_order_and_wait_idle_waits_for_them() {
        let (reaper, done, gate) = recording();
        for i in 1..=3 {
            reaper.hand_over(i).unwrap();
        }
        for _ in 1..=3 {
            gate.send(()).unwrap();
        }
        reaper.wait_idle();
        assert_eq!(*lock(&done), vec![1, 2, 3]);
    }

    #[test]
    fn an_item_already_waiting_is_not_queued_twice() {
        let (reaper, done, gate) = recording();
        reaper.hand_over(1).unwrap();
        // 1 may be running (it waits at the gate) or waiting; 2 waits behind it.
        reaper.hand_over(2).unwrap();
        reaper.hand_over(2).unwrap();
        for _ in 0..2 {
            gate.send(()).unwrap();
        }
        reaper.wait_idle();
        assert_eq!(*lock(&done), vec![1, 2]);
    }

    #[test]
    fn finish_does_what_is_queued_then_gives_items_back() {
        let (reaper, done, gate) = recording();
        reaper.hand_over(1).unwrap();
        reaper.hand_over(2).unwrap();
        gate.send(()).unwrap();
        gate.send(()).unwrap();
        reaper.finish();
        assert_eq!(*lock(&done), vec![1, 2]);
        assert_eq!(reaper.hand_over(3), Err(3));
    }

    #[test]
    fn a_panicking_job_costs_its_item_only() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&done);
        let reaper = Reaper::start("test-reaper", move |item: u32, _: &Cancel<'_>| {
            assert_ne!(item, 1, "item 1 panics");
            lock(&seen).push(item);
        })
        .unwrap();
        reaper.hand_over(1).unwrap();
        reaper.hand_over(2).unwrap();
        reaper.wait_idle();
        assert_eq!(*lock(&done), vec![2]);
    }

    #[test]
    fn a_dropped_reaper_tells_its_running_job_to_stop() {
        let (started, running) = mpsc::channel::<()>();
        let (stopped, saw_cancel) = mpsc::channel::<bool>();
        let reaper = Reaper::start("test-reaper", move |(), cancel: &Cancel<'_>| {
            started.send(()).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cancel.requested() && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            stopped.send(cancel.requested()).unwrap();
        })
        .unwrap();
        reaper.hand_over(()).unwrap();
        running.recv().unwrap();
        drop(reaper);
        assert!(
            saw_cancel.recv_timeout(Duration::from_secs(10)).unwrap(),
            "the job saw the cancellation"
        );
    }
}
