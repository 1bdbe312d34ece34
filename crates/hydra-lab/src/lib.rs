//! Test support: a lab of Linux network namespaces (venue LANs, a WireGuard-like overlay,
//! bodies, heads, the control plane) for end-to-end tests that cross a network, plus stand-ins
//! for the streaming server and client. See DESIGN.md, "The lab".
//!
//! Architecture invariant: a lab only ever runs inside namespaces it created itself
//! ([`isolate::run_isolated`]); it refuses to build in a namespace that has real links.

pub mod control;
pub mod fleet;
pub mod isolate;
pub mod mesh;
pub mod poll;
pub mod process;
pub mod standin;
pub mod topology;

pub use fleet::{BodySpec, Fleet, FleetSpec, HeadSpec};
pub use isolate::{run_isolated, run_isolated_within};
pub use process::LabProcess;
pub use topology::{Host, Lab, Network};
