//! Shared helpers: worker settings around the stand-in, a stand-in body, captured logs, polling.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydra_agent::worker::WorkerSettings;

/// The stand-in session process built with this package.
pub const STANDIN: &str = env!("CARGO_BIN_EXE_standin-web-stream");

/// The stand-in's command template, as an operator would write the real one.
pub fn standin_command() -> Vec<String> {
    [
        STANDIN,
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

/// The stand-in session command with `--record-env`: each session writes its environment to
/// `<dir>/env/<session id>.env` (read it back with [`recorded_env`]); answers the command and
/// that folder.
pub fn recording_standin_command(dir: &Path) -> (Vec<String>, std::path::PathBuf) {
    let records = dir.join("env");
    std::fs::create_dir_all(&records).unwrap();
    let mut command = standin_command();
    command.extend([
        "--record-env".to_owned(),
        format!("{}/{{session_id}}.env", records.display()),
    ]);
    (command, records)
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
