//! Hostile and malformed requests: every refusal carries containerd's exact code,
//! changes nothing (metadata or storage), writes nothing outside the root, and the
//! daemon keeps serving. A property-style loop throws random strings at random RPCs.

mod filters;
mod path_keys;
mod random;
mod refusals;
mod requests;
mod state;
