//! What operators watch: Prometheus metrics on one explicit registry, gathered off
//! the request path (figures that cost a walk or a syscall are collected in the
//! background and cached; a scrape only encodes), plus `/healthz` and `/readyz`.

mod collector;
mod error;
mod http;
mod registry;

pub use collector::{Collector, DEFAULT_INTERVAL};
pub use error::{Error, Result};
pub use http::{Health, bind, serve};
pub use registry::Metrics;
