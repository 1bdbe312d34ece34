//! Integration tests of the agent: real session processes, real signals, real sockets on
//! 127.0.0.1.

// The DevTools client of the `hydra` crate's dashboard tests, shared rather than copied.
mod binary;
mod body;
#[allow(dead_code)]
#[path = "../../../hydra/tests/it/browser.rs"]
mod browser;
mod captures;
mod colocated;
mod fleet;
mod forward_trust;
mod heartbeat_backoff;
mod input;
mod mic;
mod monitor;
mod peers;
mod proxy;
mod rating_forward;
mod reports;
mod session_start;
mod support;
mod turn;
mod wireguard_health;
mod worker;
