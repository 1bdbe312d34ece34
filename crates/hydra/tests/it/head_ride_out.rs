//! Issue 10, "heads keep streaming": a real `hydra head run` against a real server and a
//! stand-in body on loopback. With the server stopped the head walks the eligible list it kept,
//! with the same probes, and streams from its body; once a replica answers again it goes back
//! to the control plane's answer.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{
    ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, free_loopback_port,
};

const WALKING: &str = "[head] no replica answers; walking the kept eligible list";
const BACK: &str = "[head] a replica answers again; back to the control plane's eligible list";

/// The head process; killed on drop.
struct HeadProcess {
    child: Child,
}

impl Drop for HeadProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

#[tokio::test]
async fn a_head_walks_its_kept_list_while_no_replica_answers_and_returns_to_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let setup = ServerSetup::sqlite(&dir.path().join("server"));
    let mut server =
        ServerProcess::start_listening(&setup, &format!("127.0.0.1:{}", free_loopback_port()));
    // The stand-in body: the kernel completes probes' connections on its backlog.
    let body = TcpListener::bind("127.0.0.1:0").unwrap();
    let body_port = body.local_addr().unwrap().port();
    for (id, role) in [("body-1", "body"), ("head-1", "head")] {
        let (status, answer) = call(
            Method::POST,
            &server.api("/nodes"),
            Some(json!({"id": id, "roles": [role], "district": "bxl1", "venue": "v", "owner": "o", "lan_ip": "127.0.0.1", "wg_ip": "127.0.0.2"})),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, _) = call(
        Method::POST,
        &server.api("/nodes/body-1/heartbeat"),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(status, 200);

    // Each stream records its route, then holds until the test opens its gate (bounded: 30 s).
    let record = dir.path().join("streams");
    let gate = dir.path().join("gate");
    let state_dir = dir.path().join("head-state");
    let script = format!(
        "sleep 0.3; echo \"$0 $1\" >> {record}; n=$(wc -l < {record}); i=0; \
         while [ ! -e {gate}.$n ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
        record = record.display(),
        gate = gate.display()
    );
    let log = dir.path().join("head.log");
    let child = Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args([
            "head",
            "run",
            "--head-id",
            "head-1",
            "--server",
            &server.url,
        ])
        .args(["--port", &body_port.to_string(), "--probe-timeout", "500ms"])
        .arg("--state-dir")
        .arg(&state_dir)
        .args([
            "--timeout",
            "2s",
            "--attempts",
            "1",
            "--launch-window",
            "200ms",
        ])
        .args([
            "--max-attempts",
            "3",
            "--backoff-max",
            "1s",
            "--streams",
            "3",
        ])
        .args(["--", "sh", "-c", &script, "{ip}", "{body_id}"])
        .env("HYDRA_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn hydra head run");
    let mut head = HeadProcess { child };
    let head_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let open_gate = |n: usize| std::fs::write(format!("{}.{n}", gate.display()), b"").unwrap();

    // Stream 1 from the control plane's answer; the list is kept.
    assert!(
        eventually(Duration::from_secs(20), async || lines(&record) == 1).await,
        "no first stream; log:\n{}",
        head_log()
    );
    let kept = std::fs::read_to_string(state_dir.join("eligible.json")).expect("the kept list");
    assert!(
        kept.contains("body-1") && kept.contains("\"route\""),
        "{kept}"
    );

    // The control plane goes away: stream 2 comes from the kept list, same probes (LAN first).
    server.kill_9_in_place();
    open_gate(1);
    assert!(
        eventually(Duration::from_secs(20), async || lines(&record) == 2).await,
        "no stream without the control plane; log:\n{}",
        head_log()
    );
    assert_eq!(head_log().matches(WALKING).count(), 1, "{}", head_log());

    // A replica answers again: stream 3 uses its answer, not the kept list.
    server.restart_after_kill_9(&setup);
    open_gate(2);
    assert!(
        eventually(Duration::from_secs(20), async || lines(&record) == 3).await,
        "no third stream; log:\n{}",
        head_log()
    );
    let text = head_log();
    assert_eq!(text.matches(WALKING).count(), 1, "{text}");
    assert!(text.contains(BACK), "{text}");
    open_gate(3);
    let exited = eventually(Duration::from_secs(20), async || {
        head.child.try_wait().unwrap().is_some()
    })
    .await;
    assert!(
        exited,
        "the head did not stop after 3 streams; log:\n{}",
        head_log()
    );
    assert!(head.child.wait().unwrap().success(), "{}", head_log());
    let streams = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        streams,
        "127.0.0.1 body-1\n".repeat(3),
        "every stream on the body's LAN address"
    );
    drop(body);
}
