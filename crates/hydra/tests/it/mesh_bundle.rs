//! The mesh's keys and peers in the config bundle (issue 11): a real `hydra server` whose
//! `cluster.key_file` is the only key anywhere, and two real `hydra agent` processes with
//! `discovery_mode: server` and no key in their YAML. They join through the bundle; a rotation
//! done on the server's key file alone (new key added, then made primary, then the old one
//! removed) reaches them without a restart and keeps them joined throughout (no member down,
//! no datagram refused); no key shows in a log or an argv; and `/metrics` on both daemons
//! carries the mesh's `hydra_mesh_*` series (and no older `hydra_agent_mesh_*` duplicate).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::support::{
    ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, free_loopback_port, spawn_agent,
};

const OLD_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const NEW_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Writes the server's key file (0600) with `keys`, the sealing key first.
fn write_keys(path: &Path, keys: &[&str]) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, format!("{}\n", keys.join("\n"))).expect("key file");
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).expect("0600");
    std::fs::rename(&temp, path).expect("key file in place");
}

/// The id `GET /api/v1/cluster` shows for a key: the first 4 bytes of its SHA-256.
fn key_id(key_hex: &str) -> String {
    hydra_mesh::seal::Keyring::from_hex(&[key_hex.to_owned()])
        .expect("a key")
        .key_ids()[0]
        .to_string()
}

/// A `hydra agent` process with the mesh on and no key of its own; SIGKILLed on drop.
struct MeshAgent {
    child: Child,
    log: PathBuf,
    port: u16,
    state_dir: PathBuf,
}

impl MeshAgent {
    fn start(dir: &Path, server: &ServerProcess, id: &str) -> MeshAgent {
        let port = free_loopback_port();
        let state_dir = dir.join(format!("{id}-state"));
        let yaml = format!(
            "node: {{id: {id}, roles: [head], district: bxl1, venue: v, owner: acme, lan_ip: 127.0.0.1}}\n\
             server: {{listen: \"127.0.0.1:{port}\"}}\n\
             controller: {{url: [\"{url}\"], token: \"{ADMIN_TOKEN}\"}}\n\
             api_token: \"{ADMIN_TOKEN}\"\n\
             heartbeat: {{interval: 0.5}}\n\
             bundle: {{poll_interval: 1}}\n\
             cluster: {{enabled: true, bind_port: 0, advertise_addr: 127.0.0.1, discovery_mode: server}}\n\
             state_dir: \"{state}\"\nwireguard_optional: true\n",
            url = server.url,
            state = state_dir.display(),
        );
        let config = dir.join(format!("{id}.yaml"));
        std::fs::write(&config, yaml).expect("agent config");
        let log = dir.join(format!("{id}.log"));
        MeshAgent {
            child: spawn_agent(&config, &log, "info"),
            log,
            port,
            state_dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's `GET /api/v1/cluster` with members (its API token), `Null` while it does
    /// not answer.
    async fn cluster(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/cluster", self.port);
        match crate::support::http()
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }
}

impl Drop for MeshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key_ids(status: &Value) -> Vec<String> {
    status["key_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(status: &Value) -> u64 {
    status["members_by_state"]["alive"].as_u64().unwrap_or(0)
}

/// Datagrams refused for their seal (a wrong or unknown key): 0 through a good rotation.
fn refused(status: &Value) -> u64 {
    ["bad_seal", "unknown_key"]
        .iter()
        .map(|reason| status["dropped"][reason].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_without_a_key_join_through_the_bundle_and_stay_joined_through_a_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("cluster.key");
    write_keys(&key_file, &[OLD_KEY]);
    let server = ServerProcess::start(&ServerSetup::with_mesh(dir.path(), &key_file));
    let server_cluster = async || call(Method::GET, &server.api("/cluster"), None).await.1;

    let agents = [
        MeshAgent::start(dir.path(), &server, "h-mesh-a"),
        MeshAgent::start(dir.path(), &server, "h-mesh-b"),
    ];
    // Each agent sees the server and the other agent, and the server both agents.
    let joined = eventually(Duration::from_secs(30), async || {
        let mut all = alive(&server_cluster().await) == 2;
        for agent in &agents {
            all &= alive(&agent.cluster().await) == 2;
        }
        all
    })
    .await;
    assert!(
        joined,
        "the agents did not join through the bundle: server {}\nagent a {}\n{}\nagent b {}\n{}",
        server_cluster().await,
        agents[0].cluster().await,
        agents[0].log(),
        agents[1].cluster().await,
        agents[1].log(),
    );
    for agent in &agents {
        assert_eq!(key_ids(&agent.cluster().await), [key_id(OLD_KEY)]);
        // The kept bundle holds the keys, readable by the agent's user only.
        let kept = agent.state_dir.join("bundle.json");
        let mode = std::fs::metadata(&kept)
            .expect("kept bundle")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "bundle.json mode {mode:o}");
        assert!(
            std::fs::read_to_string(&kept)
                .expect("kept")
                .contains(OLD_KEY)
        );
    }

    // The rotation, on the server's key file only; each step reaches every member before the
    // next (as with Serf's keyring), and the members stay joined all along.
    let steps: [&[&str]; 3] = [&[OLD_KEY, NEW_KEY], &[NEW_KEY, OLD_KEY], &[NEW_KEY]];
    for keys in steps {
        write_keys(&key_file, keys);
        let wanted: Vec<String> = keys.iter().map(|key| key_id(key)).collect();
        let mut lowest_alive = u64::MAX;
        let applied = eventually(Duration::from_secs(30), async || {
            let server_status = server_cluster().await;
            let mut all = key_ids(&server_status) == wanted;
            lowest_alive = lowest_alive.min(alive(&server_status));
            for agent in &agents {
                let status = agent.cluster().await;
                all &= key_ids(&status) == wanted;
                lowest_alive = lowest_alive.min(alive(&status));
            }
            all
        })
        .await;
        assert!(
            applied,
            "keys {wanted:?} did not reach every member: server {}\nagent a {}\nagent b {}",
            server_cluster().await,
            agents[0].cluster().await,
            agents[1].cluster().await
        );
        assert_eq!(
            lowest_alive, 2,
            "a member left the mesh during step {wanted:?}"
        );
    }
    // A few more probe rounds under the new key alone: still joined, nobody ever down, no
    // datagram refused for its seal on any member.
    let probes = |status: &Value| status["detector"]["probes"].as_u64().unwrap_or(0);
    let probes_before = probes(&server_cluster().await);
    let probed = eventually(Duration::from_secs(10), async || {
        probes(&server_cluster().await) >= probes_before + 4
    })
    .await;
    assert!(probed, "the server kept probing under the new key");
    for status in [
        server_cluster().await,
        agents[0].cluster().await,
        agents[1].cluster().await,
    ] {
        assert_eq!(alive(&status), 2, "{status}");
        assert_eq!(status["detector"]["downs"], 0, "{status}");
        assert_eq!(refused(&status), 0, "{status}");
    }

    // No key in a log or an argv.
    for agent in &agents {
        let log = agent.log();
        assert!(
            !log.contains(OLD_KEY) && !log.contains(NEW_KEY),
            "an agent logged a key"
        );
        assert!(log.contains("[mesh] cluster keys replaced"), "{log}");
        let argv = std::fs::read(format!("/proc/{}/cmdline", agent.child.id())).expect("argv");
        let argv = String::from_utf8_lossy(&argv);
        assert!(!argv.contains(OLD_KEY) && !argv.contains(NEW_KEY));
    }
    let server_log = server.log.lock().expect("server log").clone();
    assert!(!server_log.contains(OLD_KEY) && !server_log.contains(NEW_KEY));

    // The mesh in `/metrics`, the same names on the agent and the server.
    let agent_metrics = format!("http://127.0.0.1:{}/metrics", agents[0].port);
    let server_metrics = format!("{}/metrics", server.url);
    for url in [&agent_metrics, &server_metrics] {
        let counted = eventually(Duration::from_secs(10), async || {
            let scrape = crate::metrics::scrape_url(url).await;
            scrape.value("hydra_mesh_members", &[("state", "alive")]) == 2.0
                && scrape.value("hydra_mesh_probes_total", &[]) >= 1.0
        })
        .await;
        let scrape = crate::metrics::scrape_url(url).await;
        assert!(counted, "{url}: {:?}", scrape.types);
        for (name, kind) in [
            ("hydra_mesh_members", "gauge"),
            ("hydra_mesh_probes_total", "counter"),
            ("hydra_mesh_indirect_probes_total", "counter"),
            ("hydra_mesh_suspicions_total", "counter"),
            ("hydra_mesh_downs_total", "counter"),
            ("hydra_mesh_datagrams_dropped_bad_seal_total", "counter"),
            ("hydra_mesh_datagrams_dropped_total", "counter"),
        ] {
            assert_eq!(
                scrape.types.get(name).map(String::as_str),
                Some(kind),
                "{url} {name}"
            );
        }
        // One series per fact: the agent's older `hydra_agent_mesh_*` duplicates are gone.
        let duplicates: Vec<&String> = scrape
            .types
            .keys()
            .filter(|name| name.starts_with("hydra_agent_mesh_"))
            .collect();
        assert!(duplicates.is_empty(), "{url}: {duplicates:?}");
    }
    // A datagram sealed under a key nobody holds is dropped and counted, never parsed.
    let server_mesh = server_cluster().await["addr"]
        .as_str()
        .expect("the server's mesh address")
        .to_owned();
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let keyring = hydra_mesh::seal::Keyring::from_hex(&[OLD_KEY.to_owned()]).expect("key");
    let datagram = hydra_mesh::seal::Sealer::new(keyring).seal(b"hello", hydra_api::now_ms());
    stranger
        .send_to(&datagram, &server_mesh)
        .await
        .expect("send");
    let counted = eventually(Duration::from_secs(10), async || {
        crate::metrics::scrape_url(&server_metrics)
            .await
            .value("hydra_mesh_datagrams_dropped_bad_seal_total", &[])
            >= 1.0
    })
    .await;
    assert!(counted, "the bad seal was not counted");
}
