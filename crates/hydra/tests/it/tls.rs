//! HTTPS from the field's `server.tls_cert` / `server.tls_key`, with real processes and a
//! certificate made for the test by `openssl` (a test CA; `localhost` and 127.0.0.1): the
//! server and the agent answer over TLS on loopback to a client that trusts the certificate,
//! `server.domain` names the URLs they give out, plain HTTP gets no answer, and a bad PEM stops
//! the start with an error naming the file.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{free_loopback_port, hydra_command};

/// A test CA and a certificate it signed for `localhost` / 127.0.0.1, with its key, in `dir`:
/// (CA certificate, certificate, key).
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let request = dir.join("cert.csr");
    let extensions = dir.join("cert.ext");
    std::fs::write(
        &extensions,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<std::ffi::OsString>; 3] = [
        ["req", "-x509", "-days", "1", "-subj", "/CN=hydra-test-ca"]
            .iter()
            .chain(&ec)
            .map(Into::into)
            .chain([
                "-keyout".into(),
                ca_key.clone().into(),
                "-out".into(),
                ca.clone().into(),
            ])
            .collect(),
        ["req", "-subj", "/CN=localhost"]
            .iter()
            .chain(&ec)
            .map(Into::into)
            .chain([
                "-keyout".into(),
                key.clone().into(),
                "-out".into(),
                request.clone().into(),
            ])
            .collect(),
        ["x509", "-req", "-days", "1", "-set_serial", "2"]
            .iter()
            .map(Into::into)
            .chain([
                "-in".into(),
                request.into(),
                "-CA".into(),
                ca.clone().into(),
                "-CAkey".into(),
                ca_key.into(),
                "-extfile".into(),
                extensions.into(),
                "-out".into(),
                cert.clone().into(),
            ])
            .collect(),
    ];
    for step in steps {
        let output = Command::new("openssl")
            .args(&step)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {step:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (ca, cert, key)
}

/// `hydra <args>` with its stderr lines sent to the returned channel; HYDRA_* variables removed.
fn spawn(args: &[&str], config: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut command = hydra_command(args);
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn hydra");
    let stderr = child.stderr.take().unwrap();
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, receiver)
}

/// Waits (at most 30 s) for a stderr line containing `text`; the lines read, for messages.
fn wait_for(lines: &mpsc::Receiver<String>, text: &str) -> Result<String, String> {
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(text) {
                    return Ok(seen);
                }
            }
            Err(_) => break,
        }
    }
    Err(seen)
}

/// A client that trusts the CA in `ca` and sends `localhost` to 127.0.0.1:`port`.
fn trusting(ca: &Path, port: u16) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Ends `child` (SIGKILL) and reaps it.
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn the_server_and_the_agent_serve_https_from_pem_files_and_name_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificate(dir.path());
    let server_port = free_loopback_port();
    let server_yaml = dir.path().join("controller.yaml");
    std::fs::write(
        &server_yaml,
        format!(
            "mode: controller\nserver:\n  listen: \"127.0.0.1:{server_port}\"\n  domain: localhost\n  admin_token: tls-test-admin-token\n  tls_cert: {cert}\n  tls_key: {key}\ndata_dir: {data}\n",
            cert = cert.display(),
            key = key.display(),
            data = dir.path().join("server").display(),
        ),
    )
    .unwrap();
    let (server, lines) = spawn(&["server"], &server_yaml);
    let log = wait_for(&lines, "hydra server listening");
    assert!(log.is_ok(), "the server did not start: {log:?}");
    let client = trusting(&ca, server_port);
    let answer: serde_json::Value = client
        .get(format!(
            "https://localhost:{server_port}/api/v1/check-master"
        ))
        .send()
        .await
        .expect("HTTPS to the server")
        .json()
        .await
        .unwrap();
    // server.domain names the URL it gives out: https, the domain, the port.
    assert_eq!(
        answer["master_url"],
        format!("https://localhost:{server_port}"),
        "{answer}"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{server_port}/api/v1/health"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // The agent, over TLS too (its control plane need not answer for its local API to).
    let agent_port = free_loopback_port();
    let agent_yaml = dir.path().join("worker.yaml");
    let agent_text = format!(
        "mode: worker\nserver:\n  listen: \"127.0.0.1:{agent_port}\"\n  domain: localhost\n  tls_cert: {cert}\n  tls_key: {key}\ncontroller:\n  url: \"http://127.0.0.1:{closed}\"\n  token: tls-test-admin-token\nstate_dir: {state}\nwireguard_optional: true\n",
        cert = cert.display(),
        key = key.display(),
        closed = free_loopback_port(),
        state = dir.path().join("agent").display(),
    );
    std::fs::write(&agent_yaml, &agent_text).unwrap();
    let (agent, agent_lines) = spawn(&["agent"], &agent_yaml);
    let log = wait_for(&agent_lines, "hydra agent listening");
    assert!(log.is_ok(), "the agent did not start: {log:?}");
    let health = trusting(&ca, agent_port)
        .get(format!("https://localhost:{agent_port}/api/v1/health"))
        .send()
        .await
        .expect("HTTPS to the agent");
    assert_eq!(health.status(), 200);
    stop(agent);
    stop(server);

    // A bad PEM: the start fails naming the file.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    std::fs::write(
        &agent_yaml,
        agent_text.replace(
            &format!("tls_cert: {}", cert.display()),
            &format!("tls_cert: {}", garbage.display()),
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args(["agent", "--config"])
        .arg(&agent_yaml)
        .env_remove("HYDRA_TOKEN")
        .output()
        .expect("run hydra agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} holds no PEM certificate", garbage.display())),
        "{stderr}"
    );
    std::fs::write(
        &server_yaml,
        std::fs::read_to_string(&server_yaml).unwrap().replace(
            &format!("tls_key: {}", key.display()),
            &format!("tls_key: {}", garbage.display()),
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args(["server", "--config"])
        .arg(&server_yaml)
        .env_remove("HYDRA_ADMIN_TOKEN")
        .output()
        .expect("run hydra server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is not a PEM private key", garbage.display())),
        "{stderr}"
    );
}
