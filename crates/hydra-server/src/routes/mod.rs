//! HTTP route handlers, one module per resource.

pub mod bodies;
pub mod node_config;
pub mod nodes;
pub mod system;
pub mod workers;
