//! The stand-in for moonlight-web-stream's `web-server`, launched by the worker through the same
//! command template (as the `standin-web-stream` binary, which tests use, or as `hydra
//! demo-session`, which `hydra demo` uses so that one `cargo run -p hydra` has sessions): an HTTP server on `--bind`/`--port` that serves an HTML page (with an exit
//! button, as the real page has) at every path and a WebSocket echo at `ws`.
//!
//! Usage: `standin-web-stream --bind 127.0.0.1 --port 8080 --data-dir DIR [--record-env FILE]`.
//! It prints one line per request to standard output (the worker sends that to `web-server.log`)
//! and exits 1 with the bind error (e.g. "Address already in use") when it cannot listen. With
//! `--record-env` it first writes its `HYDRA_*` and `SUNSHINE_*` variables to FILE (`KEY=VALUE`
//! lines, sorted), so tests can see what the worker hands a session process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::Uri;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

/// The page served at every path but `ws`; its exit button is what the proxy rewires.
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>stand-in stream</title></head>
<body>
<h1>stand-in stream</h1>
<video id="stream" autoplay></video>
<button id="exit" type="button">Exit</button>
<script>
  const socket = new WebSocket(new URL("ws", location.href).href.replace(/^http/, "ws"));
  socket.onopen = () => socket.send("hello");
</script>
</body>
</html>
"#;

#[derive(Debug)]
struct Options {
    bind: IpAddr,
    port: u16,
    /// Where to write the `HYDRA_*`/`SUNSHINE_*` environment, if anywhere.
    record_env: Option<std::path::PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        record_env: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => {
                let text = value()?;
                options.bind = text
                    .parse()
                    .map_err(|_| format!("--bind {text:?}: not an IP"))?;
            }
            "--port" => {
                let text = value()?;
                options.port = text
                    .parse()
                    .map_err(|_| format!("--port {text:?}: not a port"))?;
            }
            "--data-dir" => {
                value()?;
            }
            "--record-env" => options.record_env = Some(value()?.into()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.port == 0 {
        return Err("--port is required".into());
    }
    Ok(options)
}

/// Runs the stand-in with `args` (without the program name) until it is killed; the exit code
/// says why it stopped (2: bad arguments, 1: it could not listen or record).
pub async fn run(args: impl Iterator<Item = String>) -> ExitCode {
    let options = match parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("standin-web-stream: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &options.record_env
        && let Err(error) = record_env(path)
    {
        eprintln!("standin-web-stream: cannot record the environment in {path:?}: {error}");
        return ExitCode::FAILURE;
    }
    let address = SocketAddr::new(options.bind, options.port);
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("standin-web-stream: cannot listen on {address}: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("standin-web-stream: listening on {address}");
    let app = Router::new().route("/ws", get(echo)).fallback(get(page));
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("standin-web-stream: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the variables the worker hands a session process (only `HYDRA_*` and `SUNSHINE_*`:
/// the rest of the environment is the test runner's), written whole before the port opens, so a
/// session that answers has its file complete.
fn record_env(path: &std::path::Path) -> std::io::Result<()> {
    let mut lines: Vec<String> = std::env::vars()
        .filter(|(key, _)| key.starts_with("HYDRA_") || key.starts_with("SUNSHINE_"))
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect();
    lines.sort();
    let partial = path.with_extension("partial");
    std::fs::write(&partial, lines.concat())?;
    std::fs::rename(&partial, path)
}

async fn page(uri: Uri) -> impl IntoResponse {
    eprintln!("standin-web-stream: GET {uri}");
    Html(PAGE)
}

async fn echo(upgrade: WebSocketUpgrade) -> impl IntoResponse {
    eprintln!("standin-web-stream: websocket opened");
    upgrade.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(text) => Message::Text(format!("echo: {text}").into()),
            Message::Binary(bytes) => Message::Binary(bytes),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
