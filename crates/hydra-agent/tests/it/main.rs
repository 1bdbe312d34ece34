//! Integration tests of the agent: real session processes, real signals, real sockets on
//! 127.0.0.1. The tests that also start a server live in the `hydra` crate
//! (`crates/hydra/tests/it/relay/`), so this crate needs neither hydra-server nor hydra-store.

mod binary;
// The DevTools client of the `hydra` crate's dashboard tests, shared rather than copied.
#[allow(dead_code)]
#[path = "../../../hydra/tests/it/browser.rs"]
mod browser;
mod heartbeat_backoff;
mod input;
mod mic;
mod proxy;
mod support;
mod worker;

/// The stand-in session process built with this package (`support::standin`).
fn standin_binary() -> String {
    env!("CARGO_BIN_EXE_standin-web-stream").to_owned()
}
