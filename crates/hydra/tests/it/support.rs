//! Test support: the real `hydra server` process on a loopback port, and HTTP helpers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The admin token the test servers run with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A `hydra server` child process; killed (SIGKILL) on drop.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

/// Where the server keeps its state and which engine it uses.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    /// The data dir (SQLite file, admin token file).
    pub data_dir: PathBuf,
    /// `Some(postgres://...)` for PostgreSQL.
    pub database_url: Option<String>,
    /// Extra flags.
    pub extra: Vec<String>,
    /// `--admin-token`; `None` lets the server make one.
    pub admin_token: Option<String>,
}

impl ServerSetup {
    /// SQLite in `data_dir`.
    pub fn sqlite(data_dir: &Path) -> ServerSetup {
        ServerSetup {
            data_dir: data_dir.to_owned(),
            database_url: None,
            extra: Vec::new(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
        }
    }
}

impl ServerProcess {
    /// Starts the server on an ephemeral loopback port and waits (at most 30 s) until it listens.
    pub fn start(setup: &ServerSetup) -> ServerProcess {
        ServerProcess::start_listening(setup, "127.0.0.1:0")
    }

    /// Sends SIGKILL and reaps the process: no shutdown code runs.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    /// The process id (to send it signals such as SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `url` + `/api/v1` + `path`.
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client with a bounded timeout, for the admin token.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Sends a request with the admin token and returns (status, JSON body or Null).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    call_as(ADMIN_TOKEN, method, url, body).await
}

/// Sends a request with `token` and returns (status, JSON body or Null).
pub async fn call_as(
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = http().request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("request to {url} failed: {error}"));
    let status = response.status().as_u16();
    let text = response.text().await.expect("response body");
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, json)
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `standin-web-stream` binary of hydra-agent (the stand-in session process), next to
/// `hydra`. Cargo only builds a package's own binaries for its tests, so the first call builds it
/// with the cargo that runs the tests (at most 10 minutes); without `CARGO` it must exist.
pub fn standin_web_stream() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin_dir = Path::new(env!("CARGO_BIN_EXE_hydra"))
                .parent()
                .expect("hydra has a directory")
                .to_owned();
            if let Ok(cargo) = std::env::var("CARGO") {
                let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../hydra-agent/Cargo.toml");
                let mut command = Command::new(cargo);
                command.args(["build", "--quiet", "--manifest-path", manifest]);
                command.args(["--bin", "standin-web-stream"]);
                if bin_dir.ends_with("release") {
                    command.arg("--release");
                }
                let output = tempfile::tempfile().expect("temp file for cargo's output");
                command
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(output.try_clone().expect("clone the output file"));
                let mut child = command.spawn().expect("spawn cargo build");
                let deadline = Instant::now() + Duration::from_secs(600);
                let status = loop {
                    if let Some(status) = child.try_wait().expect("wait for cargo") {
                        break status;
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!("cargo build of standin-web-stream took over 10 minutes");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                };
                if !status.success() {
                    let mut text = String::new();
                    let mut output = output;
                    let _ = std::io::Seek::rewind(&mut output);
                    let _ = std::io::Read::read_to_string(&mut output, &mut text);
                    panic!("cargo build of standin-web-stream failed ({status}):\n{text}");
                }
            }
            let path = bin_dir.join("standin-web-stream");
            assert!(
                path.is_file(),
                "{} is missing: build it with `cargo build -p hydra-agent --bins`",
                path.display()
            );
            path
        })
        .clone()
}

/// A loopback port below the kernel's ephemeral range (32768 and up), so no outgoing connection
/// can take it while a test has it released (between a server's SIGKILL and its restart), that
/// was free a moment ago, and that no other test process holds: each port handed out is locked
/// (`flock`) through a file `hydra-test-ports/<port>.lock` in the temp dir for as long as this
/// process lives, and a port whose lock another process holds is passed over. nextest runs every
/// test as a process of its own, so a block per process alone (the pid's offset) let another
/// test's server take a killed replica's port (issue 10's flaky run). The kernel drops the lock
/// when the process ends, however it ends. Each call hands out a block of 4 ports
/// (10000-19999); the next 3 ports are for the caller too (e.g. a session port range).
pub fn free_loopback_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BLOCKS: u32 = 2_500;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("hydra-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock dir");
    let offset = std::process::id() % 100 * 25;
    for _ in 0..BLOCKS {
        let block = (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % BLOCKS;
        let port = u16::try_from(10_000 + block * 4).expect("port fits u16");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))
            .expect("open a port lock file");
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().expect("port locks").push(lock);
            return port;
        }
    }
    panic!("no free loopback port between 10000 and 19999");
}

impl ServerProcess {
    /// Starts the server listening on `listen` (e.g. a fixed port from [`free_loopback_port`],
    /// so a server started again on the same storage is at the same URL) and waits (at most
    /// 30 s) until it listens. Otherwise as [`ServerProcess::start`].
    pub fn start_listening(setup: &ServerSetup, listen: &str) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hydra"));
        command
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(&setup.data_dir)
            .args(&setup.extra)
            .env("RUST_LOG", "info")
            .env_remove("HYDRA_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(token) = &setup.admin_token {
            command.args(["--admin-token", token]);
        }
        if let Some(url) = &setup.database_url {
            command.args(["--database-url", url]);
        }
        ServerProcess::spawn_and_wait(command, &format!("on {listen}"))
    }

    /// Spawns `command` (a `hydra server` whose stderr is piped), keeps its log, and waits (at
    /// most 30 s) for its "listening" line; `what` says which server in the panic.
    fn spawn_and_wait(mut command: Command, what: &str) -> ServerProcess {
        let mut child = command.spawn().expect("spawn hydra server");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("hydra server listening")
                    && let Some(address) = line
                        .split("listen=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                {
                    let _ = address_tx.send(address.to_owned());
                }
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let Ok(address) = address_rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hydra server {what} did not start within 30 s; its log:\n{}",
                log.lock().unwrap()
            );
        };
        ServerProcess {
            child,
            url: format!("http://{address}"),
            log,
        }
    }

    /// Sends SIGKILL (no shutdown code runs), reaps the process, and starts a new server on
    /// `setup`'s storage at the same address (see [`ServerProcess::start_listening`]).
    pub fn restart_after_kill_9(&mut self, setup: &ServerSetup) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
        let listen = self
            .url
            .strip_prefix("http://")
            .expect("the server URL is http://ADDRESS")
            .to_owned();
        *self = ServerProcess::start_listening(setup, &listen);
    }
}

/// The body ids of an eligible answer, in order.
pub fn ids(answer: &serde_json::Value) -> Vec<String> {
    answer["bodies"]
        .as_array()
        .expect("bodies array")
        .iter()
        .map(|body| body["id"].as_str().expect("body id").to_owned())
        .collect()
}

impl ServerProcess {
    /// SIGKILL and reap, keeping the handle: [`ServerProcess::restart_after_kill_9`] starts it
    /// again at the same address later (a control plane that is away for a while).
    pub fn kill_9_in_place(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts the server (SQLite) with its data dir on a `size` tmpfs mounted in a private mount
    /// namespace of its own (`unshare --mount`, as the lab does; needs root), so the test can
    /// fill the disk under it without touching the host. The process is the server itself
    /// (`unshare` and `sh` exec it); the tmpfs is reached from outside at
    /// [`ServerProcess::namespace_path`]. Otherwise as [`ServerProcess::start`].
    pub fn start_on_tmpfs(setup: &ServerSetup, size: &str) -> ServerProcess {
        std::fs::create_dir_all(&setup.data_dir).expect("create the data dir");
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "sh", "-c"])
            // The script's arguments: $0 the size, $1 the dir, then the server's argv.
            .arg(r#"size="$0"; dir="$1"; shift; mount -t tmpfs -o "size=$size" tmpfs "$dir" && exec "$@""#)
            .arg(size)
            .arg(&setup.data_dir)
            .arg(env!("CARGO_BIN_EXE_hydra"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&setup.data_dir)
            .args(&setup.extra)
            .env("RUST_LOG", "info")
            .env_remove("HYDRA_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(token) = &setup.admin_token {
            command.args(["--admin-token", token]);
        }
        ServerProcess::spawn_and_wait(command, "on a tmpfs")
    }

    /// `path` as the server sees it, through `/proc/PID/root` (its mount namespace): inside a
    /// tmpfs that [`ServerProcess::start_on_tmpfs`] mounted.
    pub fn namespace_path(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.child.id())).join(relative)
    }
}

impl ServerSetup {
    /// Replica `r{index}` on `database_url` (its own data dir) with a short lease (3 s, renewed
    /// every second), so a master is known and a takeover fits in a test.
    pub fn replica(data_dir: &Path, database_url: &str, index: usize) -> ServerSetup {
        let mut setup = ServerSetup::sqlite(data_dir);
        setup.database_url = Some(database_url.to_owned());
        setup.extra = [
            "--replica-id",
            &format!("r{index}"),
            "--lease-ttl",
            "3s",
            "--lease-renew",
            "1s",
        ]
        .map(str::to_owned)
        .to_vec();
        setup
    }

    /// SQLite in `dir/data`, with the server's mesh on (an ephemeral UDP port on 127.0.0.1) and
    /// sealed with the keys in `key_file`, through a config file `dir/server.yaml`.
    pub fn with_mesh(dir: &Path, key_file: &Path) -> ServerSetup {
        let config = dir.join("server.yaml");
        std::fs::write(
            &config,
            format!(
                "cluster:\n  enabled: true\n  bind_port: 0\n  advertise_addr: 127.0.0.1\n  key_file: {}\n",
                key_file.display()
            ),
        )
        .expect("server config");
        let mut setup = ServerSetup::sqlite(&dir.join("data"));
        setup.extra = vec!["--config".into(), config.display().to_string()];
        setup
    }
}

/// Replicas `r1` to `r{count}` on `database_url` ([`ServerSetup::replica`]), each with `extra`
/// flags too and a temp dir of its own (kept as long as the returned dirs live).
pub fn start_replicas(
    database_url: &str,
    count: usize,
    extra: &[&str],
) -> (Vec<ServerProcess>, Vec<tempfile::TempDir>) {
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for index in 1..=count {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut setup = ServerSetup::replica(dir.path(), database_url, index);
        setup
            .extra
            .extend(extra.iter().map(|flag| flag.to_string()));
        servers.push(ServerProcess::start(&setup));
        dirs.push(dir);
    }
    (servers, dirs)
}

/// `hydra` with `args`, none of this environment's `HYDRA_*` variables (the test's config is the
/// only source), stdin closed.
pub fn hydra_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hydra"));
    command.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HYDRA_") {
            command.env_remove(key);
        }
    }
    command
}

/// Spawns `hydra agent --config CONFIG` ([`hydra_command`]) with `RUST_LOG=rust_log`, its
/// stderr in the file `log` and its stdout dropped.
pub fn spawn_agent(config: &Path, log: &Path, rust_log: &str) -> Child {
    let args: [&std::ffi::OsStr; 3] = ["agent".as_ref(), "--config".as_ref(), config.as_os_str()];
    hydra_command(&args)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("agent log file"))
        .spawn()
        .expect("spawn hydra agent")
}

/// What a [`mesh_member`] publishes and where it joins.
pub struct MeshMemberSpec<'a> {
    /// The node it stands for.
    pub node_id: &'a str,
    /// Its one role (`body`, `worker`).
    pub role: &'a str,
    /// Its session capacity (pending is always 0).
    pub capacity: u32,
    /// Its venue (district `bxl1`).
    pub venue: &'a str,
    /// The API address it gossips.
    pub api_url: &'a str,
    /// The mesh address it joins.
    pub join: &'a str,
    /// The cluster key, 64 hex digits.
    pub key_hex: &'a str,
}

/// A peer-mesh member in this test process (the real mesh driver on a UDP socket of 127.0.0.1),
/// standing for a node. Dropping it leaves the mesh; `task.abort()` kills it without leaving.
pub struct MeshMember {
    /// Its view of the mesh.
    pub handle: hydra_mesh::driver::ClusterHandle,
    /// The driver's task.
    pub task: tokio::task::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for MeshMember {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a [`MeshMember`] as `spec` says.
pub async fn mesh_member(spec: MeshMemberSpec<'_>) -> MeshMember {
    use hydra_mesh::driver::{self, ClusterHandle, ClusterSettings, Discovery};
    use hydra_mesh::member::{MemberId, MemberState};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a mesh member's socket");
    let addr = socket.local_addr().expect("its address");
    let settings = ClusterSettings {
        id: MemberId {
            addr,
            node_id: spec.node_id.to_owned(),
            generation: 1,
        },
        state: MemberState {
            node_id: spec.node_id.to_owned(),
            generation: 1,
            version: 0,
            roles: vec![spec.role.to_owned()],
            api_url: spec.api_url.to_owned(),
            pending: 0,
            capacity: spec.capacity,
            district: "bxl1".into(),
            venue: spec.venue.to_owned(),
            tag: None,
        },
        discovery: Discovery::List(vec![spec.join.to_owned()]),
        port: 0,
        keyring: hydra_mesh::seal::Keyring::parse(spec.key_hex).expect("a cluster key"),
        mesh: hydra_mesh::mesh::MeshSettings::default(),
    };
    let handle = ClusterHandle::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let capacity = spec.capacity;
    let task = tokio::spawn(driver::run(
        socket,
        settings,
        handle.clone(),
        move || (0, capacity),
        stop.clone(),
    ));
    MeshMember { handle, task, stop }
}

/// Writes the cluster key `key_hex` to `path` as a key file (one line, mode 0600).
pub fn write_key_file(path: &Path, key_hex: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{key_hex}\n")).expect("write the key file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("key file 0600");
}
