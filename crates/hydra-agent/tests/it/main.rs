//! Integration tests of the agent: real session processes, real signals, real sockets on
//! 127.0.0.1.

mod captures;
mod colocated;
mod fleet;
mod heartbeat_backoff;
mod input;
mod mesh;
mod monitor;
mod peers;
mod proxy;
mod rating_forward;
mod session_start;
mod support;
mod turn;
mod wireguard_health;
mod worker;
