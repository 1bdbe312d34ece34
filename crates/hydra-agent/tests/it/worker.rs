//! The worker's session supervisor with real stand-in processes: start, stop, a process killed
//! with a real signal, a deleted data dir, idle cleanup, the field's start errors, and the
//! start-up guard with orphan cleanup.

use std::net::SocketAddr;
use std::time::Duration;

use hydra_agent::worker::orphans::{ALREADY_RUNNING, bind_agent_port, clean_orphans};
use hydra_agent::worker::process::{LOG_FILE, Marker};
use hydra_agent::worker::{SessionSpec, StartError, Worker};
use hydra_api::SessionState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use tokio::time::Instant;

use crate::support::{
    Body, Logs, closed_port, http_get, process_exists, settings, slow_command, standin_command,
    wait_for,
};

fn spec(id: &str) -> SessionSpec {
    SessionSpec {
        id: Some(id.into()),
        body_ip: "127.0.0.1".into(),
        ..SessionSpec::default()
    }
}

#[tokio::test]
async fn a_session_runs_the_standin_on_a_port_of_the_range_and_stop_ends_its_group() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let settings = settings(temp.path(), &body);
    let range = settings.port_range_start..settings.port_range_start + 4;
    let worker = Worker::new(settings);

    let session = worker.start_session(spec("alpha")).await.unwrap();
    assert_eq!(session.status, SessionState::Running);
    assert!(
        range.contains(&session.port),
        "port {} in {range:?}",
        session.port
    );
    assert!(session.process_alive && session.data_directory_ok);
    assert!(session.stream_url.ends_with("/session/alpha/"));
    let data_dir = temp.path().join("sessions").join("alpha");
    assert!(data_dir.join(LOG_FILE).is_file());
    assert_eq!(Marker::read(&data_dir).unwrap().port, session.port);

    let page = http_get(SocketAddr::from(([127, 0, 0, 1], session.port)), "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(r#"<button id="exit""#));
    assert_eq!(worker.active_sessions(), 1);

    // A second session gets another port.
    let second = worker.start_session(spec("beta")).await.unwrap();
    assert_ne!(second.port, session.port);

    let pid = session.process_id.unwrap();
    let stopped = worker.stop_session("alpha", "test").await.unwrap();
    assert_eq!(stopped.status, SessionState::Stopped);
    assert!(!stopped.process_alive);
    assert!(!process_exists(pid), "the process group is gone");
    assert_eq!(worker.active_sessions(), 1);
    assert!(worker.proxy_target("alpha").is_none());
    assert!(worker.stop_session("nobody", "test").await.is_none());
    worker.shutdown().await;
    assert!(!process_exists(second.process_id.unwrap()));
}

#[tokio::test]
async fn a_killed_process_turns_the_session_error_and_idle_cleanup_removes_it() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let mut settings = settings(temp.path(), &body);
    settings.idle_timeout = Duration::from_millis(300);
    let worker = Worker::new(settings);
    let logs = Logs::capture();

    let session = worker.start_session(spec("victim")).await.unwrap();
    let pid = session.process_id.unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = worker.check_sessions(Instant::now()).await;
        if !report.died.is_empty() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(report.died, ["victim"]);
    let now = worker.session("victim").unwrap();
    assert_eq!(now.status, SessionState::Error);
    assert!(now.error.unwrap().contains("session process exited"));
    assert!(!now.process_alive);
    assert_eq!(worker.active_sessions(), 0);
    assert!(logs.text().contains("[session victim] process exited"));

    // Not yet idle long enough: still there.
    let early = worker.check_sessions(Instant::now()).await;
    assert!(early.removed.is_empty());
    let data_dir = temp.path().join("sessions").join("victim");
    assert!(data_dir.is_dir());
    let later = worker
        .check_sessions(Instant::now() + Duration::from_millis(400))
        .await;
    assert_eq!(later.removed, ["victim"]);
    assert!(worker.session("victim").is_none());
    assert!(!data_dir.exists());
    assert!(logs.text().contains("[cleanup] removed idle session"));
}

#[tokio::test]
async fn a_deleted_data_dir_is_an_alert_and_an_error_and_ends_the_process() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let worker = Worker::new(settings(temp.path(), &body));
    let logs = Logs::capture();

    let session = worker.start_session(spec("doomed")).await.unwrap();
    std::fs::remove_dir_all(temp.path().join("sessions").join("doomed")).unwrap();
    let report = worker.check_sessions(Instant::now()).await;
    assert_eq!(report.lost_data_dir, ["doomed"]);
    let now = worker.session("doomed").unwrap();
    assert_eq!(now.status, SessionState::Error);
    assert_eq!(now.error.as_deref(), Some("data directory vanished"));
    assert!(!now.data_directory_ok);
    let text = logs.text();
    assert!(
        text.contains("ALERT: data directory of session doomed vanished"),
        "{text}"
    );
    assert!(!process_exists(session.process_id.unwrap()));
}

#[tokio::test]
async fn the_periodic_check_runs_on_its_own() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let worker = Worker::new(settings(temp.path(), &body));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let checker = {
        let worker = worker.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { worker.run_checks(shutdown).await })
    };
    let session = worker.start_session(spec("watched")).await.unwrap();
    kill(Pid::from_raw(session.process_id.unwrap()), Signal::SIGTERM).unwrap();
    wait_for(
        "the check marks the session error",
        Duration::from_secs(10),
        || worker.session("watched").unwrap().status == SessionState::Error,
    )
    .await;
    shutdown.cancel();
    checker.await.unwrap();
}

#[tokio::test]
async fn start_errors_use_the_field_words_and_leave_nothing_behind() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let root = temp.path().join("sessions");

    let mut unreachable = settings(temp.path(), &body);
    unreachable.body_port = closed_port();
    let port = unreachable.body_port;
    let worker = Worker::new(unreachable);
    let error = worker.start_session(spec("x")).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("body 127.0.0.1 unreachable on port {port}")
    );

    let mut missing = settings(temp.path(), &body);
    missing.command = vec!["/opt/moonlight-web-stream/web-server".into()];
    let error = Worker::new(missing)
        .start_session(spec("x"))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "moonlight-web-stream not installed");

    let mut never_ready = settings(temp.path(), &body);
    never_ready.command = vec!["/bin/sleep".into(), "30".into()];
    never_ready.ready_timeout = Duration::from_millis(500);
    let worker = Worker::new(never_ready);
    let error = worker.start_session(spec("slow")).await.unwrap_err();
    assert!(
        matches!(error, StartError::PairingTimeout { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("pairing with body 127.0.0.1 timed out")
    );
    assert!(worker.session("slow").is_none());
    assert!(!root.join("slow").exists(), "data dir removed");

    let mut crashing = settings(temp.path(), &body);
    crashing.command = vec!["/bin/sh".into(), "-c".into(), "echo boom; exit 3".into()];
    let worker = Worker::new(crashing);
    let error = worker.start_session(spec("crash")).await.unwrap_err();
    assert!(error.to_string().contains("boom"), "{error}");
    assert!(!root.join("crash").exists());

    let bad = Worker::new(settings(temp.path(), &body));
    let error = bad
        .start_session(SessionSpec {
            body_ip: "not-an-ip".into(),
            ..spec("x")
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("body_ip"), "{error}");
    let error = bad.start_session(spec("../etc")).await.unwrap_err();
    assert!(error.to_string().contains("session_id"), "{error}");
    assert!(bad.snapshot().is_empty());
}

#[tokio::test]
async fn capacity_and_ports_run_out_with_the_field_words() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let mut small = settings(temp.path(), &body);
    small.max_sessions = 1;
    let worker = Worker::new(small);
    worker.start_session(spec("one")).await.unwrap();
    let error = worker.start_session(spec("two")).await.unwrap_err();
    assert_eq!(error.to_string(), "max sessions reached");
    let duplicate = worker.start_session(spec("one")).await.unwrap_err();
    assert!(matches!(duplicate, StartError::Duplicate(_)));
    worker.shutdown().await;

    // Every port of the range held by something else.
    let mut blocked = settings(temp.path(), &body);
    blocked.max_sessions = 2;
    let start = blocked.port_range_start;
    let _holders: Vec<std::net::TcpListener> = (start..start + 2)
        .filter_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .collect();
    let worker = Worker::new(blocked);
    let error = worker.start_session(spec("portless")).await.unwrap_err();
    assert_eq!(error.to_string(), "no ports available");
}

#[tokio::test]
async fn an_early_address_in_use_exit_moves_the_session_to_another_port() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let mut racy = settings(temp.path(), &body);
    let first = racy.port_range_start;
    // The first port of the range is "taken between the check and the bind".
    let standin = standin_command().join(" ");
    racy.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "if [ {{port}} = {first} ]; then echo 'bind: Address already in use' >&2; exit 1; fi; exec {standin}"
        ),
    ];
    let worker = Worker::new(racy);
    let session = worker.start_session(spec("moved")).await.unwrap();
    assert_ne!(session.port, first);
    assert_eq!(session.status, SessionState::Running);
    worker.shutdown().await;
}

#[tokio::test]
async fn the_port_guard_refuses_a_taken_port_and_orphans_are_cleaned_after_it() {
    let holder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = holder.local_addr().unwrap();
    let error = bind_agent_port(address).await.unwrap_err();
    assert!(error.to_string().starts_with(ALREADY_RUNNING), "{error}");
    assert_eq!(
        ALREADY_RUNNING,
        "cannot bind — is another hydra agent already running?"
    );

    // An earlier agent left a live session process and a stale dir behind.
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("sessions");
    let live_dir = root.join("left-running");
    std::fs::create_dir_all(&live_dir).unwrap();
    std::fs::create_dir_all(root.join("stale")).unwrap();
    let orphan = std::process::Command::new("/bin/sleep")
        .arg("60")
        .current_dir(&live_dir)
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = i32::try_from(orphan.id()).unwrap();
    Marker {
        session_id: "left-running".into(),
        pgid: pid,
        port: 1,
    }
    .write(&live_dir)
    .unwrap();
    let mut removed = clean_orphans(&root).unwrap();
    removed.sort();
    assert_eq!(removed, ["left-running", "stale"]);
    assert!(std::fs::read_dir(&root).unwrap().next().is_none());
    let mut orphan = orphan;
    let status = tokio::task::spawn_blocking(move || orphan.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

/// Issue 7 item 2: a caller that gives up (the server's request dropped) no longer stops the
/// start halfway: it still ends `running`, with its process, and holds its slot as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_caller_gives_up_still_finishes_running() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let mut settings = settings(temp.path(), &body);
    settings.command = slow_command("0.6");
    let worker = Worker::new(settings);

    let dropped = tokio::time::timeout(
        Duration::from_millis(150),
        worker.start_session(spec("late")),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the caller gave up before the start ended"
    );
    assert_eq!(
        worker.session("late").map(|session| session.status),
        Some(SessionState::Starting)
    );
    wait_for("the start finished", Duration::from_secs(10), || {
        worker
            .session("late")
            .is_some_and(|session| session.status == SessionState::Running)
    })
    .await;
    let session = worker.session("late").unwrap();
    assert!(session.process_alive, "{session:?}");
    let page = http_get(SocketAddr::from(([127, 0, 0, 1], session.port)), "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(worker.active_sessions(), 1);
    worker.shutdown().await;
    assert!(!process_exists(session.process_id.unwrap()));
}

/// Issue 7 item 2: a start nobody waits for any more still has its deadline: past
/// `ready_timeout` it fails, its process group is ended and nothing of it is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_start_that_never_answers_is_ended_at_its_deadline() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let mut settings = settings(temp.path(), &body);
    settings.command = slow_command("600");
    settings.ready_timeout = Duration::from_millis(800);
    settings.stop_grace = Duration::from_millis(300);
    let worker = Worker::new(settings);

    let dropped = tokio::time::timeout(
        Duration::from_millis(150),
        worker.start_session(spec("stuck")),
    )
    .await;
    assert!(
        dropped.is_err(),
        "the caller gave up before the start ended"
    );
    let mut pid = None;
    wait_for("the process to be spawned", Duration::from_secs(5), || {
        pid = worker
            .session("stuck")
            .and_then(|session| session.process_id);
        pid.is_some()
    })
    .await;
    let pid = pid.unwrap();
    wait_for(
        "the abandoned start to be ended",
        Duration::from_secs(10),
        || worker.session("stuck").is_none(),
    )
    .await;
    // Ended before the entry left the table; reaped (no longer even a zombie) soon after.
    wait_for("its process group ended", Duration::from_secs(10), || {
        !process_exists(pid)
    })
    .await;
    assert_eq!(worker.active_sessions(), 0);
    assert!(!temp.path().join("sessions").join("stuck").exists());
}

#[tokio::test]
async fn each_session_gets_its_own_webrtc_range_in_the_command_and_its_environment() {
    let temp = tempfile::tempdir().unwrap();
    let body = Body::start().await;
    let mut settings = settings(temp.path(), &body);
    let records = temp.path().join("records");
    std::fs::create_dir_all(&records).unwrap();
    // The operator's template names the range; a shell in front records what it was given
    // (as argv), then execs the stand-in, which records its environment.
    let mut command: Vec<String> = [
        "sh",
        "-c",
        "printf '%s %s' \"$1\" \"$2\" > \"$3.argv\"; shift 3; exec \"$0\" \"$@\"",
    ]
    .map(String::from)
    .to_vec();
    command.push(crate::support::standin());
    command.extend(
        [
            "{webrtc_port_start}",
            "{webrtc_port_end}",
            &format!("{}/{{session_id}}", records.display()),
        ]
        .map(String::from),
    );
    command.extend(standin_command().into_iter().skip(1));
    command.extend([
        "--record-env".to_owned(),
        format!("{}/{{session_id}}.env", records.display()),
    ]);
    settings.command = command;
    settings.webrtc_port_start = 41_000;
    settings.webrtc_ports_per_session = 20;
    let port_range_start = settings.port_range_start;
    let worker = Worker::new(settings);

    let mut ranges = Vec::new();
    for id in ["alpha", "beta"] {
        let session = worker.start_session(spec(id)).await.unwrap();
        let argv = std::fs::read_to_string(records.join(format!("{id}.argv"))).unwrap();
        let (first, last) = argv.split_once(' ').unwrap();
        let (first, last): (u16, u16) = (first.parse().unwrap(), last.parse().unwrap());
        let slot = session.port - port_range_start;
        assert_eq!(
            (first, last),
            (41_000 + 20 * slot, 41_000 + 20 * slot + 19),
            "session {id} on port {} (slot {slot})",
            session.port
        );
        assert_eq!(worker.webrtc_ports(session.port), Some((first, last)));
        let env = crate::support::recorded_env(&records.join(format!("{id}.env")));
        assert_eq!(
            crate::support::value_of(&env, "HYDRA_WEBRTC_PORT_START"),
            Some(first.to_string().as_str())
        );
        assert_eq!(
            crate::support::value_of(&env, "HYDRA_WEBRTC_PORT_END"),
            Some(last.to_string().as_str())
        );
        ranges.push((first, last));
    }
    let [(a_first, a_last), (b_first, b_last)] = ranges[..] else {
        unreachable!()
    };
    assert!(
        a_last < b_first || b_last < a_first,
        "two sessions share WebRTC ports: {ranges:?}"
    );
    worker.shutdown().await;
}
