//! Stand-ins for the streaming server (Sunshine, port 47990) and the streaming client, speaking
//! the surface Hydra cares about: a TCP port that accepts, and a connection that stays up.
//!
//! Server: accepts on every `--listen` address, greets each connection with
//! `HYDRA-LAB-STREAM <body id>` and then sends a `tick` line every [`TICK`], so a client notices
//! within [`SILENCE`] when the path drops (an nftables drop sends no reset).
//! Client: connects to `--connect`, reads the greeting (the "pairing"), holds the connection for
//! `--hold-ms`, and exits 0; it exits non-zero when it cannot connect ([`EXIT_CONNECT`]), when the
//! greeting does not come ([`EXIT_PAIRING`]) or when the connection drops ([`EXIT_DROPPED`]). Every
//! event is appended to the `--record` file as one line, for tests to assert.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// How often the server writes a tick line.
pub const TICK: Duration = Duration::from_millis(200);
/// How long the client tolerates no byte from the server before it calls the stream dropped.
pub const SILENCE: Duration = Duration::from_millis(1_500);
/// Exit code: the client could not connect.
pub const EXIT_CONNECT: i32 = 2;
/// Exit code: the client connected but got no greeting (the stand-in's pairing failure).
pub const EXIT_PAIRING: i32 = 3;
/// Exit code: the connection dropped while streaming.
pub const EXIT_DROPPED: i32 = 4;
/// The first word of the greeting line.
pub const GREETING: &str = "HYDRA-LAB-STREAM";
/// At most this many connections are served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// Options of the stand-in streaming server.
#[derive(Debug, clap::Parser)]
#[command(name = "hydra-lab-stream-server")]
pub struct ServerArgs {
    /// Address to accept on (repeatable), e.g. `0.0.0.0:47990`.
    #[arg(long, required = true)]
    pub listen: Vec<SocketAddr>,
    /// The body id sent in the greeting.
    #[arg(long)]
    pub body_id: String,
}

/// Options of the stand-in streaming client.
#[derive(Debug, clap::Parser)]
#[command(name = "hydra-lab-stream-client")]
pub struct ClientArgs {
    /// `ip:port` of the streaming server (what `hydra head run` substitutes).
    #[arg(long)]
    pub connect: SocketAddr,
    /// Hold the stream this long, then close it and exit 0.
    #[arg(long, default_value_t = 3_000)]
    pub hold_ms: u64,
    /// Give up connecting after this long.
    #[arg(long, default_value_t = 1_000)]
    pub connect_timeout_ms: u64,
    /// Append one line per event to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Before connecting, wait (at most 30 s) until this file exists; tests use it to act
    /// between the head's discovery and the client's launch.
    #[arg(long)]
    pub wait_for: Option<PathBuf>,
}

/// Runs the server until killed.
pub fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let mut accept_threads = Vec::new();
    for address in &args.listen {
        let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
        println!("[stand-in server] {} listening on {address}", args.body_id);
        let body_id = args.body_id.clone();
        let active = Arc::clone(&active);
        accept_threads.push(std::thread::spawn(move || {
            accept_loop(listener, body_id, active)
        }));
    }
    for thread in accept_threads {
        if thread.join().is_err() {
            anyhow::bail!("an accept thread panicked");
        }
    }
    Ok(())
}

fn accept_loop(listener: TcpListener, body_id: String, active: Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        println!("[stand-in server] {body_id} accepted {peer}");
        let body_id = body_id.clone();
        let active = Arc::clone(&active);
        std::thread::spawn(move || {
            let reason = stream_to(stream, &body_id);
            println!("[stand-in server] {body_id} closed {peer}: {reason}");
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Greets, then ticks until the peer goes away; answers why it stopped.
fn stream_to(mut stream: TcpStream, body_id: &str) -> String {
    if let Err(error) = writeln!(stream, "{GREETING} {body_id}") {
        return error.to_string();
    }
    // A blocked path makes writes pile up in the send buffer; bound that with a write timeout.
    let _ = stream.set_write_timeout(Some(SILENCE));
    loop {
        std::thread::sleep(TICK);
        if let Err(error) = stream.write_all(b"tick\n") {
            return error.to_string();
        }
    }
}

/// Runs the client; answers the process exit code.
pub fn client(args: &ClientArgs) -> i32 {
    let record = |line: String| {
        println!("[stand-in client] {line}");
        if let Some(path) = &args.record {
            append_line(path, &line);
        }
    };
    let address = args.connect;
    record(format!("launched {address} at_ms={}", unix_ms()));
    if let Some(path) = &args.wait_for {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            if Instant::now() > deadline {
                record(format!(
                    "failed {address} reason=no {} after 30 s",
                    path.display()
                ));
                return EXIT_CONNECT;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let stream = match TcpStream::connect_timeout(
        &address,
        Duration::from_millis(args.connect_timeout_ms),
    ) {
        Ok(stream) => stream,
        Err(error) => {
            record(format!("failed {address} reason=connect: {error}"));
            return EXIT_CONNECT;
        }
    };
    let _ = stream.set_read_timeout(Some(SILENCE));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let body_id = match reader.read_line(&mut line) {
        Ok(n) if n > 0 && line.starts_with(GREETING) => {
            line.trim_end()[GREETING.len()..].trim().to_owned()
        }
        other => {
            record(format!(
                "failed {address} reason=pairing: no greeting ({other:?})"
            ));
            return EXIT_PAIRING;
        }
    };
    let connected_at = Instant::now();
    record(format!(
        "connected {address} body={body_id} at_ms={}",
        unix_ms()
    ));
    let hold = Duration::from_millis(args.hold_ms);
    while connected_at.elapsed() < hold {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            outcome => {
                let reason = match outcome {
                    Ok(_) => "closed by the server".to_owned(),
                    Err(error) => format!("silent: {error}"),
                };
                record(format!(
                    "dropped {address} body={body_id} held_ms={} reason={reason}",
                    connected_at.elapsed().as_millis()
                ));
                return EXIT_DROPPED;
            }
        }
    }
    record(format!(
        "ended {address} body={body_id} held_ms={}",
        connected_at.elapsed().as_millis()
    ));
    0
}

fn append_line(path: &Path, line: &str) {
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(error) = written {
        eprintln!(
            "[stand-in client] cannot append to {}: {error}",
            path.display()
        );
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_args(connect: SocketAddr, hold_ms: u64) -> ClientArgs {
        ClientArgs {
            connect,
            hold_ms,
            connect_timeout_ms: 500,
            record: None,
            wait_for: None,
        }
    }

    #[test]
    fn client_holds_a_stream_then_exits_zero() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || accept_loop(listener, "b1".into(), Arc::default()));
        assert_eq!(client(&client_args(address, 600)), 0);
    }

    #[test]
    fn client_exits_non_zero_when_nothing_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        assert_eq!(client(&client_args(address, 600)), EXIT_CONNECT);
    }

    #[test]
    fn client_reports_a_pairing_failure_without_greeting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            // Accept and close at once: no greeting.
            let _ = listener.accept();
        });
        assert_eq!(client(&client_args(address, 600)), EXIT_PAIRING);
    }

    #[test]
    fn client_notices_a_dropped_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            writeln!(stream, "{GREETING} b1").unwrap();
            // Then close: the client is mid-hold.
        });
        assert_eq!(client(&client_args(address, 5_000)), EXIT_DROPPED);
    }
}
