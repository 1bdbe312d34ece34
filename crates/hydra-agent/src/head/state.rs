//! What a head keeps in its state dir between processes: the pairing record (which address its
//! streaming client was given, and how that stream is doing), the connect times it measured
//! but has not reported yet, the bodies a discovery passed over and has not reported yet, and the
//! last eligible list with the route it used (walked when no replica answers).

use std::io::Write;
use std::path::Path;

use hydra_api::EligibleResponse;
use hydra_client::Measurement;
use hydra_client::discovery::{PassedOver, Route};
use serde::Serialize;

/// The pairing record's file in the state dir.
pub const PAIRING_FILE: &str = "pairing.json";
/// The unreported connect times' file in the state dir (`body:transport:rtt_ms` per line).
pub const MEASUREMENTS_FILE: &str = "measured";
/// The unreported bodies passed over (`body_id@unix_ms` per line): a `hydra head discover`
/// process reports them with the next process's first request.
pub const PASSED_OVER_FILE: &str = "passed-over";

/// How the stream on a route is doing, as the pairing record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairingState {
    /// The client was started on the route.
    Launching,
    /// It ran past the launch window.
    Streaming,
    /// It failed to launch; the route is forgotten.
    LaunchFailed,
    /// It ended after streaming, or the head stopped it.
    Ended,
}

#[derive(Debug, Serialize)]
struct PairingRecord<'a> {
    head_id: &'a str,
    body_id: &'a str,
    ip: String,
    port: u16,
    transport: &'static str,
    state: PairingState,
    /// Why it failed or how it ended, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    updated_at: String,
}

/// Writes the pairing record to `<state_dir>/pairing.json` atomically (temporary file, fsync,
/// rename), so a reader never sees half a record.
pub fn write_pairing(
    state_dir: &Path,
    head_id: &str,
    route: &Route,
    state: PairingState,
    detail: Option<&str>,
    now_ms: i64,
) -> std::io::Result<()> {
    let record = PairingRecord {
        head_id,
        body_id: &route.body_id,
        ip: route.ip.to_string(),
        port: route.port,
        transport: route.transport.as_str(),
        state,
        detail,
        updated_at: hydra_api::rfc3339(now_ms),
    };
    write_json_atomically(state_dir, PAIRING_FILE, &record)
}

/// Writes `value` as `<state_dir>/<name>`: a temporary file beside it, fsync, rename, fsync of
/// the dir, so a reader (or a head started after a crash) sees the old file or the new one.
fn write_json_atomically(
    state_dir: &Path,
    name: &str,
    value: &impl Serialize,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(state_dir)?;
    let temporary = state_dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, state_dir.join(name))?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// The kept eligible list's file in the state dir.
pub const KEPT_ELIGIBLE_FILE: &str = "eligible.json";

/// Keeps the eligible answer a route came from, with the route, atomically (temporary file,
/// fsync, rename, fsync of the dir), so a head whose control plane goes away still knows its
/// bodies, even after a restart.
pub fn keep_eligible(
    state_dir: &Path,
    head_id: &str,
    answer: &EligibleResponse,
    route: &Route,
    now_ms: i64,
) -> std::io::Result<()> {
    let record = serde_json::json!({
        "head_id": head_id,
        "kept_at": hydra_api::rfc3339(now_ms),
        "route": {"body_id": route.body_id, "ip": route.ip.to_string(), "transport": route.transport.as_str()},
        "answer": answer,
    });
    write_json_atomically(state_dir, KEPT_ELIGIBLE_FILE, &record)
}

/// The kept eligible answer, if there is a usable one. A file that does not read back is renamed
/// `eligible.json.corrupt-<now_ms>` (never used, never deleted) and named in an ERROR.
pub fn load_kept_eligible(state_dir: &Path, now_ms: i64) -> Option<EligibleResponse> {
    let path = state_dir.join(KEPT_ELIGIBLE_FILE);
    let bytes = std::fs::read(&path).ok()?;
    let answer = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|mut record| serde_json::from_value(record["answer"].take()).ok());
    if answer.is_none() {
        let set_aside = state_dir.join(format!("{KEPT_ELIGIBLE_FILE}.corrupt-{now_ms}"));
        let renamed = std::fs::rename(&path, &set_aside);
        tracing::error!(path = %path.display(), set_aside = %set_aside.display(), renamed = renamed.is_ok(), "[head] the kept eligible list is corrupt; set aside, not used");
    }
    answer
}

/// Connect times an earlier process measured but could not report yet; unreadable lines are
/// skipped (the file is a cache, not a record).
pub fn load_measurements(state_dir: &Path) -> Vec<Measurement> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(MEASUREMENTS_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.trim().parse::<Measurement>().ok())
        .collect()
}

/// Keeps the connect times still to report, for the next request or the next process; a
/// failure is logged, never fatal (the times are only a ranking hint).
pub fn save_measurements(state_dir: &Path, measurements: &[Measurement]) {
    let text: String = measurements
        .iter()
        .map(|measurement| format!("{measurement}\n"))
        .collect();
    let written = std::fs::create_dir_all(state_dir)
        .and_then(|()| std::fs::write(state_dir.join(MEASUREMENTS_FILE), text));
    if let Err(error) = written {
        tracing::warn!(dir = %state_dir.display(), "[head] cannot keep measured connect times: {error}");
    }
}

/// Bodies an earlier process passed over and has not reported yet; unreadable lines are skipped
/// (the file is a cache: the worst a lost line costs is one probe).
pub fn load_passed_over(state_dir: &Path) -> Vec<PassedOver> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(PASSED_OVER_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.trim().parse::<PassedOver>().ok())
        .collect()
}

/// Keeps the bodies passed over still to report, for the next request or the next process; a
/// failure is logged, never fatal.
pub fn save_passed_over(state_dir: &Path, passed_over: &[PassedOver]) {
    let text: String = passed_over
        .iter()
        .map(|report| format!("{report}\n"))
        .collect();
    let written = std::fs::create_dir_all(state_dir)
        .and_then(|()| std::fs::write(state_dir.join(PASSED_OVER_FILE), text));
    if let Err(error) = written {
        tracing::warn!(dir = %state_dir.display(), "[head] cannot keep the bodies passed over: {error}");
    }
}

#[cfg(test)]
mod tests {
    use hydra_core::Transport;

    use super::*;

    fn route() -> Route {
        Route {
            body_id: "b-2".into(),
            ip: "198.19.0.11".parse().unwrap(),
            port: 47990,
            transport: Transport::Wireguard,
            rtt_ms: 3,
        }
    }

    #[test]
    fn measurements_survive_a_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let measured = vec![
            Measurement {
                body_id: "b-1".into(),
                transport: Transport::Lan,
                rtt_ms: 1,
            },
            Measurement {
                body_id: "b-2".into(),
                transport: Transport::Wireguard,
                rtt_ms: 40,
            },
        ];
        save_measurements(dir.path(), &measured);
        assert_eq!(load_measurements(dir.path()), measured);
        std::fs::write(
            dir.path().join(MEASUREMENTS_FILE),
            "junk\nb-3:lan:7\nb-4:udp:1\n",
        )
        .unwrap();
        assert_eq!(load_measurements(dir.path()).len(), 1);
    }

    #[test]
    fn bodies_passed_over_survive_a_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let passed = vec![PassedOver {
            body_id: "dead-01".into(),
            at_ms: 1_700_000_000_000,
        }];
        save_passed_over(dir.path(), &passed);
        assert_eq!(load_passed_over(dir.path()), passed);
        std::fs::write(dir.path().join(PASSED_OVER_FILE), "junk\nb-3@12\n@5\n").unwrap();
        assert_eq!(load_passed_over(dir.path()).len(), 1);
    }

    #[test]
    fn the_kept_eligible_list_reads_back_and_a_corrupt_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_kept_eligible(dir.path(), 1), None);
        let answer = EligibleResponse {
            policy: hydra_api::PolicyWire::CrossVenue,
            bodies: Vec::new(),
        };
        keep_eligible(dir.path(), "head-1", &answer, &route(), 0).unwrap();
        assert_eq!(load_kept_eligible(dir.path(), 1), Some(answer));
        assert!(!dir.path().join("eligible.json.tmp").exists());
        std::fs::write(dir.path().join(KEPT_ELIGIBLE_FILE), b"{\"answer\": 7}").unwrap();
        assert_eq!(load_kept_eligible(dir.path(), 42), None, "never used");
        assert!(!dir.path().join(KEPT_ELIGIBLE_FILE).exists());
        assert_eq!(
            std::fs::read(dir.path().join("eligible.json.corrupt-42")).unwrap(),
            b"{\"answer\": 7}",
            "set aside as it was, not deleted"
        );
    }

    #[test]
    fn the_pairing_record_names_the_route() {
        let dir = tempfile::tempdir().unwrap();
        write_pairing(
            dir.path(),
            "head-1",
            &route(),
            PairingState::LaunchFailed,
            Some("pairing failed"),
            0,
        )
        .unwrap();
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(PAIRING_FILE)).unwrap()).unwrap();
        assert_eq!(record["body_id"], "b-2");
        assert_eq!(record["ip"], "198.19.0.11");
        assert_eq!(record["transport"], "wireguard");
        assert_eq!(record["state"], "launch_failed");
        assert_eq!(record["detail"], "pairing failed");
        assert!(!dir.path().join("pairing.json.tmp").exists());
    }
}
