//! Shared helpers: worker settings around the stand-in, a stand-in body, captured logs, polling.
//! The `hydra` crate's relay tests include this file too (`tests/it/relay/mod.rs`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydra_agent::worker::WorkerSettings;

/// The stand-in session process. The module that includes this file says where it is
/// (`super::standin_binary`): the agent's own tests have it from cargo, the `hydra` crate's relay
/// tests, which share this file, build it.
pub fn standin() -> String {
    super::standin_binary()
}

/// The stand-in's command template, as an operator would write the real one.
pub fn standin_command() -> Vec<String> {
    let standin = standin();
    [
        standin.as_str(),
        "--bind",
        "{bind}",
        "--port",
        "{port}",
        "--data-dir",
        "{data_dir}",
    ]
    .map(String::from)
    .to_vec()
}

/// The stand-in behind `sh`, answering only after `delay` seconds (a slow pairing); the shell
/// execs it, so the process the worker watches is the stand-in itself.
pub fn slow_command(delay: &str) -> Vec<String> {
    let mut command: Vec<String> = ["sh", "-c", &format!("sleep {delay}; exec \"$0\" \"$@\"")]
        .map(String::from)
        .to_vec();
    command.extend(standin_command());
    command
}

/// A port range start that other tests are unlikely to use at the same time: a block of 8 ports
/// from this process's share of 20000-27999 whose ports all bind now (a block some other
/// process holds is passed over; a full run once lost a test to one).
pub fn port_base() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let all_free = |base: u16| {
        (base..base + 8).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
    };
    let mut base = 0;
    // Bounded: at most every block of the share is looked at, then the last one is used.
    for _ in 0..10 {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 10;
        base = 20_000 + (std::process::id() % 100) as u16 * 80 + slot * 8;
        if all_free(base) {
            break;
        }
    }
    base
}

/// Worker settings for tests: the stand-in, short timeouts, sessions under `root`.
pub fn settings(root: &Path, body: &Body) -> WorkerSettings {
    let mut settings = WorkerSettings::new(root.join("sessions"));
    settings.command = standin_command();
    settings.port_range_start = port_base();
    settings.max_sessions = 4;
    settings.body_port = body.port();
    settings.ready_timeout = Duration::from_secs(10);
    settings.check_interval = Duration::from_millis(100);
    settings.idle_timeout = Duration::from_secs(60);
    settings.stop_grace = Duration::from_secs(2);
    settings
}

/// A stand-in body: accepts on 127.0.0.1 (its "Sunshine" port) until dropped.
pub struct Body {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Body {
    /// Listens on a free loopback port.
    pub async fn start() -> Body {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        Body { address, task }
    }

    /// Its streaming port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Log lines written while the guard lives (this thread's subscriber; tokio tests run on it).
pub struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    /// Starts capturing.
    pub fn capture() -> Logs {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedWriter(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(false)
            .finish();
        Logs {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}

#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `check` every 20 ms until it is true, for at most `limit`; panics naming `what`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process with this id exists (a zombie counts as gone once reaped).
pub fn process_exists(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// A plain HTTP/1.1 GET on loopback; returns status line, headers and body as text.
pub async fn http_get(address: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The `KEY=VALUE` lines the stand-in wrote with `--record-env`, as pairs.
pub fn recorded_env(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// The value of `key` in a [`recorded_env`].
pub fn value_of<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// The viewer capability in a session's stream URL (its `hydra_viewer` query parameter).
pub fn capability_of(stream_url: &str) -> String {
    let (_, query) = stream_url
        .split_once('?')
        .expect("a query in the stream URL");
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("hydra_viewer="))
        .expect("hydra_viewer in the stream URL")
        .to_owned()
}

/// A coturn process on loopback, stopped (by its pid) on drop.
pub struct Coturn {
    child: std::process::Child,
}

impl Coturn {
    /// Starts `turnserver` with `config` plus what a loopback test needs on top of the agent's
    /// settings: listen and relay on 127.0.0.1 (standing in for the node's LAN address), no TLS,
    /// and loopback peers allowed (the test client's peer is on loopback too).
    pub fn start(dir: &Path, config: &str, port: u16) -> Coturn {
        let path = dir.join("turnserver.conf");
        let loopback = [
            "listening-ip=127.0.0.1".to_owned(),
            "relay-ip=127.0.0.1".to_owned(),
            "allow-loopback-peers".to_owned(),
            "no-tls".to_owned(),
            "no-dtls".to_owned(),
            format!("pidfile={}", dir.join("turnserver.pid").display()),
            format!("log-file={}", dir.join("turn.log").display()),
            "simple-log".to_owned(),
        ];
        std::fs::write(&path, format!("{config}{}\n", loopback.join("\n"))).unwrap();
        let child = std::process::Command::new("turnserver")
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start coturn's turnserver (scripts/test installs the coturn package)");
        let coturn = Coturn { child };
        // coturn listens on TCP and UDP on the same port; TCP tells when it is up.
        let ready = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            ready,
            "coturn never listened on {port}; its log:\n{}",
            std::fs::read_to_string(dir.join("turn.log")).unwrap_or_default()
        );
        coturn
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both TCP and UDP on loopback for coturn to listen on (it listens on both; a
/// port free for UDP alone was once taken for TCP by another test's socket).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}
