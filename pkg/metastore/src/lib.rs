//! The snapshot metadata: one SQLite file under the root, in WAL mode with
//! `synchronous=FULL`, so a transaction is on disk before the call that made it
//! returns and a crash at any instant leaves either all of it or none of it.
//!
//! One connection writes (SQLite admits one writer anyway, and holding our own lock
//! gives callers a critical section to publish storage in); reads run concurrently on
//! a small pool of read-only connections.

mod error;
mod schema;
mod store;
mod tx;

pub use error::{Error, Result};
pub use store::{Store, StoreOptions};
pub use tx::{KindCounts, NewSnapshot, Record, Tx};
