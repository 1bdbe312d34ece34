//! HTTP route handlers, one module per resource.

pub mod bodies;
pub mod nodes;
pub mod system;
pub mod workers;
