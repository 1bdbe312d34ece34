//! A real headless Chromium driven over the DevTools protocol: a small CDP client on
//! tokio-tungstenite (already in the workspace) rather than chromiumoxide, because the tests
//! need five commands (create a page, navigate, evaluate, screenshot, set the viewport) and not
//! a large generated crate. Chromium runs in its own process group, ended with it on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// axe-core from npm, vendored (see `tests/assets/README.md`), injected to check a page.
const AXE: &str = include_str!("../assets/axe.min.js");

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary: `HYDRA_TEST_CHROMIUM`, else `chromium` on the PATH (Debian's package,
/// which `scripts/test` installs when missing).
fn chromium_binary() -> PathBuf {
    std::env::var_os("HYDRA_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// One headless Chromium and one page in it.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    socket: Socket,
    session: String,
    next_id: u64,
    /// Events that arrived while waiting for an answer, by method.
    pub events: HashMap<String, Vec<Value>>,
}

impl Browser {
    /// Starts Chromium headless on a loopback DevTools port and opens a blank page (at most 30 s).
    pub async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// [`Browser::start`] with `extra` command-line flags (the agent's microphone test adds the
    /// fake media device flags).
    pub async fn start_with(extra: &[&str]) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut command = Command::new(chromium_binary());
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {:?}: {error}", chromium_binary()));
        let stderr = child.stderr.take().expect("chromium stderr");
        let (found, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("DevTools listening on ")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(rest.trim().to_owned());
                }
            }
        });
        let browser_url = url
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed no DevTools URL within 30 s");
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(browser_url.as_str()),
        )
        .await
        .expect("DevTools connect timed out")
        .expect("DevTools connect");
        let mut browser = Browser {
            child,
            _profile: profile,
            socket,
            session: String::new(),
            next_id: 0,
            events: HashMap::new(),
        };
        let target = browser
            .command_on(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .command_on(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        browser.command("Page.enable", json!({})).await;
        browser.command("Runtime.enable", json!({})).await;
        browser
    }

    /// Sends a command to the page and answers its result (panics on a protocol error).
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.command_on(Some(&session), method, params).await
    }

    async fn command_on(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("send to DevTools");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"))
                .expect("DevTools closed")
                .expect("DevTools read");
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] == id {
                if let Some(error) = answer.get("error") {
                    panic!("{method} failed: {error}");
                }
                return answer["result"].clone();
            }
            if let Some(event) = answer["method"].as_str() {
                self.events
                    .entry(event.to_owned())
                    .or_default()
                    .push(answer["params"].clone());
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and answers its JSON value.
    /// Loads axe-core into the page and asserts it finds no serious or critical violation, on
    /// the phone layout (390 px) and the desktop one (1280 px).
    pub async fn assert_axe_clean(&mut self) {
        self.eval(&format!("{AXE}\n;true")).await;
        for (width, height, mobile) in [(390, 844, true), (1280, 900, false)] {
            self.command(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
            )
            .await;
            let violations: Value = self
                .eval(
                    "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map(v =>
                    ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))})))",
                )
                .await;
            let serious: Vec<&Value> = violations
                .as_array()
                .expect("violations")
                .iter()
                .filter(|violation| {
                    matches!(violation["impact"].as_str(), Some("serious" | "critical"))
                })
                .collect();
            assert!(serious.is_empty(), "axe-core at {width}px: {serious:#?}");
        }
    }

    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Navigates to `url` and waits (at most 30 s) until the document has loaded.
    pub async fn open(&mut self, url: &str) {
        self.command("Page.navigate", json!({"url": url})).await;
        assert!(
            self.until(
                Duration::from_secs(30),
                "document.readyState === 'complete'"
            )
            .await,
            "{url} did not load within 30 s"
        );
    }

    /// Polls `condition` (a JS expression) every 100 ms until it is true or `timeout` passes.
    pub async fn until(&mut self, timeout: Duration, condition: &str) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(&format!("Boolean({condition})")).await == json!(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a PNG of the page at `width`×`height` CSS pixels to `path`.
    pub async fn screenshot(&mut self, width: u32, height: u32, mobile: bool, path: &Path) {
        self.command(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        let shot = self
            .command(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = decode_base64(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium forks helpers: end the whole group it leads, then reap it.
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Standard base64 (the DevTools protocol's encoding of binary data).
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {byte}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|byte| *byte != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut accumulated = 0u32;
        for (index, byte) in chunk.iter().enumerate() {
            accumulated |= value(*byte) << (18 - 6 * index);
        }
        let produced = chunk.len() * 6 / 8;
        for index in 0..produced {
            out.push((accumulated >> (16 - 8 * index)) as u8);
        }
    }
    out
}

#[test]
fn base64_decodes_what_devtools_sends() {
    assert_eq!(decode_base64("aHlkcmE="), b"hydra");
    assert_eq!(decode_base64("iVBORw=="), b"\x89PNG");
}
