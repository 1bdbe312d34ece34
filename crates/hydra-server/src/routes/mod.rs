//! HTTP route handlers, one module per resource, and the layers every request goes through.
//! Handlers parse, check the caller and call a service; they are the only code (with
//! `crate::duties`) that takes the whole `AppState`.

pub mod bodies;
pub mod captures;
pub mod colocated;
pub mod events;
pub mod layers;
pub mod node_config;
pub mod nodes;
pub mod sessions;
pub mod system;
pub mod workers;
