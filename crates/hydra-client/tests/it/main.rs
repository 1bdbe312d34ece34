//! Integration tests of the SDK against stand-in replicas on loopback: master discovery and
//! caching, failover of reads and writes, retries and their bounds, error mapping.

mod errors;
mod failover;
mod retries;
mod streams;
mod support;
