//! Slow clients and shutdown (issue 7 item 6), against the real `hydra server` and `hydra agent`
//! processes over loopback sockets: unfinished request heads and idle connections are dropped,
//! past the connection cap the admitted connections still answer, an unfinished request does
//! not hold shutdown past its deadline, and a second signal ends the process at once.

use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ADMIN_TOKEN, free_loopback_port, hydra_command};

/// How long a test waits for something that, with the limits it configured, takes a second or
/// two; without those limits it would never happen.
const PATIENCE: Duration = Duration::from_secs(30);

/// A `hydra server` or `hydra agent` process on a loopback port; SIGKILLed on drop.
struct Daemon {
    child: Child,
    address: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// `hydra server` with `settings` (YAML lines) added to its config file.
    async fn server(settings: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("127.0.0.1:{}", free_loopback_port());
        let yaml = format!(
            "listen: \"{address}\"\ndata_dir: \"{}\"\n{settings}\n",
            dir.path().join("data").display()
        );
        Daemon::start(dir, "server", &yaml, address).await
    }

    /// `hydra agent` (role head, so no worker set-up; its control plane unreachable, so it keeps
    /// trying to enrol) with `settings` (YAML lines of its `server:` section).
    async fn agent(settings: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("127.0.0.1:{}", free_loopback_port());
        // Port 1 on loopback refuses: the agent's enrolment retries with backoff meanwhile.
        let yaml = format!(
            "node: {{id: h-serving, roles: [head], district: bxl1, venue: v, owner: acme}}\n\
             server:\n  listen: \"{address}\"\n{settings}\n\
             controller: {{url: [\"http://127.0.0.1:1\"], token: \"{ADMIN_TOKEN}\"}}\n\
             state_dir: \"{}\"\nwireguard_optional: true\n",
            dir.path().join("state").display()
        );
        Daemon::start(dir, "agent", &yaml, address).await
    }

    async fn start(dir: tempfile::TempDir, which: &str, yaml: &str, address: String) -> Daemon {
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).expect("write the config");
        let log = dir.path().join("daemon.log");
        let mut command = hydra_command(&[which, "--config"]);
        command
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if which == "server" {
            // The admin token comes from the environment, not argv.
            command.env("HYDRA_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        let child = command.spawn().expect("spawn hydra");
        let mut daemon = Daemon {
            child,
            address,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(mut socket) = TcpStream::connect(&daemon.address).await
                && health(&mut socket).await == Some(200)
            {
                return daemon;
            }
            if let Some(status) = daemon.child.try_wait().expect("poll the daemon") {
                panic!(
                    "hydra {which} exited ({status}); its log:\n{}",
                    daemon.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "hydra {which} did not answer health; its log:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(&self.address)
            .await
            .expect("connect to the daemon")
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        kill(pid, signal).expect("signal the daemon");
    }

    /// The exit status, if the process ends within `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the log holds `text`, at most [`PATIENCE`].
    async fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the log never said {text:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `GET /api/v1/health` on a kept-alive connection and reads the one answer; its status,
/// or `None` when the connection fails or closes.
async fn health(socket: &mut TcpStream) -> Option<u16> {
    get(socket, "/api/v1/health")
        .await
        .map(|(status, _)| status)
}

/// One keep-alive GET and its answer (status, body), read by its content-length.
async fn get(socket: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: hydra\r\n\r\n");
    socket.write_all(request.as_bytes()).await.ok()?;
    read_answer(socket).await
}

async fn read_answer(socket: &mut TcpStream) -> Option<(u16, String)> {
    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse().ok())?;
                if bytes.len() >= end + 4 + length {
                    let status = head.split_whitespace().nth(1)?.parse().ok()?;
                    let body = String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]);
                    return Some((status, body.into_owned()));
                }
            }
            let count = socket.read(&mut chunk).await.ok()?;
            if count == 0 {
                return None;
            }
            bytes.extend_from_slice(&chunk[..count]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// Whether the peer closes `socket` within `limit` (reads until end of stream or a reset).
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    let drain = async {
        let mut chunk = [0u8; 1024];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, drain).await.is_ok()
}

/// Unfinished heads, silent connections and idle keep-alive connections are all closed by the
/// daemon, while a complete request on a new connection still answers.
async fn slow_clients_are_dropped(daemon: Daemon) {
    let mut unfinished = Vec::new();
    for _ in 0..10 {
        let mut socket = daemon.connect().await;
        socket
            .write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: hydra\r\n")
            .await
            .expect("write half a head");
        unfinished.push(socket);
    }
    let mut silent = daemon.connect().await;
    let mut idle = daemon.connect().await;
    assert_eq!(health(&mut idle).await, Some(200));
    for socket in &mut unfinished {
        assert!(
            closed_within(socket, PATIENCE).await,
            "a connection with an unfinished request head stayed open; log:\n{}",
            daemon.log()
        );
    }
    assert!(
        closed_within(&mut silent, PATIENCE).await,
        "a connection that never sent a request stayed open"
    );
    assert!(
        closed_within(&mut idle, PATIENCE).await,
        "an idle keep-alive connection stayed open"
    );
    let mut fresh = daemon.connect().await;
    assert_eq!(health(&mut fresh).await, Some(200));
}

#[tokio::test]
async fn server_drops_unfinished_heads_and_idle_connections() {
    slow_clients_are_dropped(
        Daemon::server("header_read_timeout: 1\nidle_timeout: 2\nshutdown_timeout: 5").await,
    )
    .await;
}

#[tokio::test]
async fn agent_drops_unfinished_heads_and_idle_connections() {
    slow_clients_are_dropped(
        Daemon::agent("  header_read_timeout: 1\n  idle_timeout: 2\n  shutdown_timeout: 5").await,
    )
    .await;
}

#[tokio::test]
async fn past_the_connection_cap_admitted_connections_still_answer() {
    let daemon =
        Daemon::server("max_connections: 4\nheader_read_timeout: 600\nidle_timeout: 600").await;
    let mut admitted = Vec::new();
    for _ in 0..4 {
        let mut socket = daemon.connect().await;
        assert_eq!(health(&mut socket).await, Some(200));
        admitted.push(socket);
    }
    // The kernel completes the fifth connection on the listener's backlog; the server does not
    // accept it while four are open.
    let mut waiting = daemon.connect().await;
    waiting
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: hydra\r\n\r\n")
        .await
        .expect("write the waiting request");
    for socket in &mut admitted {
        assert_eq!(
            health(socket).await,
            Some(200),
            "an admitted connection stopped answering"
        );
    }
    let (status, metrics) = get(&mut admitted[0], "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("hydra_http_connections_open{component=\"controller\"} 4"),
        "open connections are not counted as 4:\n{metrics}"
    );
    let mut byte = [0u8; 1];
    assert!(
        matches!(waiting.try_read(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "the connection past the cap was answered"
    );
    daemon
        .wait_log("connection cap reached; new connections wait")
        .await;
    // One admitted connection closes: the waiting one is accepted and answered.
    drop(admitted.pop());
    assert_eq!(
        read_answer(&mut waiting).await.map(|(status, _)| status),
        Some(200)
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("connection cap reached").count(),
        1,
        "the cap is logged once:\n{log}"
    );
}

/// Starts a request whose body never arrives in full: it stays in flight until dropped. Asks
/// for `100 Continue`, which the daemon sends once the handler reads the body, so the request is
/// known to be in the handler when this returns.
async fn unfinished_body(daemon: &Daemon, path: &str) -> TcpStream {
    let mut socket = daemon.connect().await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: hydra\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\nexpect: 100-continue\r\n\r\n"
    );
    socket
        .write_all(head.as_bytes())
        .await
        .expect("write the request head");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 256];
    let continued = tokio::time::timeout(PATIENCE, async {
        while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
            let count = socket.read(&mut chunk).await.expect("read 100 Continue");
            assert!(count > 0, "the daemon closed the connection");
            answer.extend_from_slice(&chunk[..count]);
        }
    })
    .await;
    assert!(continued.is_ok(), "no 100 Continue; log:\n{}", daemon.log());
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    socket
        .write_all(b"{\"id\"")
        .await
        .expect("write part of the body");
    socket
}

#[tokio::test]
async fn server_an_unfinished_request_does_not_hold_shutdown_past_the_deadline() {
    let mut daemon = Daemon::server("shutdown_timeout: 1\nheader_read_timeout: 600").await;
    let _held = unfinished_body(&daemon, "/api/v1/nodes").await;
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(PATIENCE).await;
    assert!(
        status.is_some_and(|status| status.success()),
        "the server did not stop cleanly after its shutdown deadline ({status:?}); log:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("shutdown deadline passed"),
        "{}",
        daemon.log()
    );
}

/// With a shutdown deadline far away and a request holding it, a second SIGTERM ends the
/// process at once, with status 143.
async fn a_second_signal_exits_at_once(mut daemon: Daemon, path: &str, stopping: &str) {
    let _held = unfinished_body(&daemon, path).await;
    daemon.signal(Signal::SIGTERM);
    daemon.wait_log(stopping).await;
    assert!(
        daemon.wait_exit(Duration::from_millis(200)).await.is_none(),
        "the held request did not hold the first shutdown; log:\n{}",
        daemon.log()
    );
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(PATIENCE).await;
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(143),
        "log:\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("second stop signal"));
}

#[tokio::test]
async fn server_a_second_signal_exits_at_once() {
    let daemon = Daemon::server("shutdown_timeout: 600\nheader_read_timeout: 600").await;
    a_second_signal_exits_at_once(daemon, "/api/v1/nodes", "[controller] shutting down").await;
}

#[tokio::test]
async fn agent_a_second_signal_exits_at_once() {
    let daemon = Daemon::agent("  shutdown_timeout: 600\n  header_read_timeout: 600").await;
    a_second_signal_exits_at_once(daemon, "/session/s-1/rating", "[worker] shutting down").await;
}
