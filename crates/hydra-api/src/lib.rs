//! Wire types of the HTTP API under `/api/v1`: request and response bodies and error codes,
//! shared by the server, the agent and the client SDK.
//!
//! API boundary: these types are a compatibility promise. Requests reject unknown fields.
//! No logic beyond conversions from `hydra-core` types.

pub mod agent;
pub mod captures;
pub mod cluster;
pub mod eligible;
pub mod error;
pub mod events;
pub mod explain;
pub mod node_config;
pub mod nodes;
pub mod selection;
pub mod sessions;
pub mod system;
pub mod text;
pub mod write_id;

pub use eligible::*;
pub use error::{ErrorBody, ErrorCode};
pub use events::{FleetSnapshot, Lagged, NodeRemoved, NodeStatusChanged};
pub use explain::*;
pub use node_config::*;
pub use nodes::*;
pub use selection::*;
pub use sessions::*;
pub use system::*;
