//! The peer mesh, which lives in the `hydra-mesh` crate (the server runs it too); re-exported
//! here so `hydra_agent::cluster::...` paths keep working. `start` fills the mesh's settings
//! from the agent's configuration.

pub use hydra_mesh::{config, driver, member, mesh, seal};

pub mod start;
