//! The agent's local API: its bodies live in `hydra_api::agent` (re-exported here); this file
//! turns the worker's sessions into them and tells whether WireGuard is up.

pub use hydra_api::agent::{AgentHealth, AgentStatus, HealthExtra, SessionHealth};

use crate::worker::SessionSnapshot;

impl From<&SessionSnapshot> for SessionHealth {
    fn from(session: &SessionSnapshot) -> SessionHealth {
        SessionHealth {
            id: session.id.clone(),
            body_ip: session.body_ip.clone(),
            status: session.status,
            process_alive: session.process_alive,
            data_directory_ok: session.data_directory_ok,
            active_connections: session.active_connections,
            age: session.age.as_secs(),
            port: session.port,
            error: session.error.clone(),
        }
    }
}

/// Whether a WireGuard interface is up: a `/sys/class/net` device whose `uevent` says
/// `DEVTYPE=wireguard` and whose flags have IFF_UP.
pub fn wireguard_up() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/class/net") else {
        return false;
    };
    devices.filter_map(Result::ok).any(|device| {
        let path = device.path();
        let is_wireguard = std::fs::read_to_string(path.join("uevent"))
            .is_ok_and(|text| text.lines().any(|line| line.trim() == "DEVTYPE=wireguard"));
        let is_up = std::fs::read_to_string(path.join("flags"))
            .ok()
            .and_then(|text| u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok())
            .is_some_and(|flags| flags & 0x1 != 0);
        is_wireguard && is_up
    })
}
