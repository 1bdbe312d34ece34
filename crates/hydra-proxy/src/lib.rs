//! The relay's HTTP forwarding: a byte-exact reverse proxy to a session process (WebSocket
//! upgrades joined with `copy_bidirectional`, active connections counted), the streaming
//! HTML rewriter that injects the session page script, the browser's access to a session
//! (the viewer capability, the session id and raw path of a `/session/{id}/...` request), and
//! `serve`, which serves a router with the limits both daemons need (header and idle timeouts, a
//! connection cap, a shutdown deadline), over TLS from PEM files when configured (`tls`), and the
//! Prometheus text both daemons serve at `/metrics`, and the one HTTP error and extractors of both
//! daemons (`api_error`, `extract`).
//!
//! Used by the agent (worker sessions) and by the server (colocated `/session/` paths).
//! Architecture invariant: no knowledge of sessions' lifecycle, the store or the control plane;
//! it forwards what it is given to the address it is given.

pub mod api_error;
pub mod capability;
pub mod extract;
pub mod inject;
pub mod metrics_text;
pub mod proxy;
pub mod serve;
pub mod session_path;
pub mod signals;
pub mod tls;
pub mod token;
pub mod turn;
