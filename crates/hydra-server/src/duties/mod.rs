//! The server's background duties: loops that run beside the routes for the life of the
//! process, each with the shared `AppState` and a shutdown token (some on the master only,
//! through `retention::singleton_duty`). Services (`crate::fleet`, `crate::feed`,
//! `crate::replica`, `crate::captures`, ...) never see `AppState`; duties and routes compose them.

pub mod capture_resume;
pub mod capture_retention;
pub mod feed;
pub mod mastership;
pub mod mesh;
pub mod retention;
