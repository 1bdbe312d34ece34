//! The CLI as an operator uses it: the real `hydra` binary against the real server process,
//! human tables, `--json`, exit codes and error messages, and several `--server` replicas.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call};

/// What one CLI run printed and how it ended.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `hydra ARGS` with `--server`/`--token` taken from the environment given, bounded to 30 s.
pub(crate) async fn hydra(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hydra"));
    command
        .args(args)
        .env_remove("HYDRA_SERVER")
        .env_remove("HYDRA_TOKEN")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("hydra {args:?} did not finish within 30 s"))
        .expect("run hydra");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The arguments of `hydra nodes enrol` for a node of `acme` in district `bxl1`, then `extra`.
fn enrol<'a>(id: &'a str, role: &'a str, venue: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "nodes",
        "enrol",
        "--id",
        id,
        "--role",
        role,
        "--district",
        "bxl1",
        "--venue",
        venue,
        "--owner",
        "acme",
    ];
    args.extend_from_slice(extra);
    args
}

async fn heartbeat(server: &ServerProcess, id: &str, idle: bool) {
    let (status, answer) = call(
        Method::POST,
        &server.api(&format!("/nodes/{id}/heartbeat")),
        Some(json!({"idle": idle})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

fn start() -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    (dir, server)
}

#[tokio::test]
async fn enrol_list_eligible_park_drain_and_remove_through_the_cli() {
    let (_dir, server) = start();
    let env = [
        ("HYDRA_SERVER", server.url.as_str()),
        ("HYDRA_TOKEN", ADMIN_TOKEN),
    ];
    // Each body its own addresses, so a table that mixed bodies up would show.
    for (id, venue, lan, wg, vram) in [
        ("b-rup-1", "rupelmonde", "10.1.0.1", "10.99.0.1", "8192"),
        ("b-rup-2", "rupelmonde", "10.1.0.2", "10.99.0.2", "24576"),
        ("b-c7", "cloud-seven", "10.2.0.1", "10.99.0.3", "16384"),
    ] {
        let run = hydra(
            &env,
            &enrol(
                id,
                "body",
                venue,
                &["--lan-ip", lan, "--wg-ip", wg, "--vram-mb", vram],
            ),
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stdout.starts_with(&format!("enrolled node {id}\n")),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("\ntoken: hyn_"), "{}", run.stdout);
        assert!(
            run.stdout.contains("this token will not be shown again"),
            "{}",
            run.stdout
        );
        heartbeat(&server, id, true).await;
    }
    let run = hydra(&env, &enrol("h-rup", "head", "rupelmonde", &["--json"])).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let enrolled: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON");
    assert_eq!(enrolled["node"]["id"], "h-rup");
    assert!(enrolled["token"].as_str().unwrap().starts_with("hyn_"));

    let run = hydra(&env, &["bodies", "eligible", "--head-id", "h-rup"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    expect_test::expect![[r#"
        policy: quickroute (bodies in the head's own venue, of its owner), 2 bodies
        ID       VENUE       SAME_VENUE  LAN_IP    WG_IP      IDLE  VRAM_MB  TIER   RTT_MS
        b-rup-2  rupelmonde  yes         10.1.0.2  10.99.0.2  yes   24576    owned  -
        b-rup-1  rupelmonde  yes         10.1.0.1  10.99.0.1  yes   8192     owned  -
    "#]]
    .assert_eq(&run.stdout);

    for id in ["b-rup-1", "b-rup-2"] {
        let run = hydra(
            &env,
            &[
                "nodes",
                "move",
                id,
                "--district",
                "bxl1-test",
                "--venue",
                "parking",
            ],
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            run.stdout,
            format!("moved node {id} to district bxl1-test, venue parking\n")
        );
    }
    let run = hydra(
        &env,
        &["bodies", "eligible", "--head-id", "h-rup", "--json"],
    )
    .await;
    let answer: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON");
    assert_eq!(answer["policy"], "cross_venue");
    assert_eq!(answer["bodies"][0]["id"], "b-c7");
    assert_eq!(answer["bodies"][0]["same_venue"], false);

    let run = hydra(&env, &["nodes", "drain", "b-c7"]).await;
    assert_eq!(run.stdout, "node b-c7 is drained: it takes no new work\n");
    let run = hydra(&env, &["bodies", "eligible", "--head-id", "h-rup"]).await;
    assert_eq!(run.stdout, "policy: none (no eligible body), 0 bodies\n");
    let run = hydra(&env, &["nodes", "undrain", "b-c7"]).await;
    assert_eq!(run.stdout, "node b-c7 is not drained: it takes new work\n");

    let run = hydra(&env, &["nodes", "remove", "b-rup-1"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "removed node b-rup-1\n")
    );
    let run = hydra(&env, &["nodes", "show", "b-rup-1"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            r#"error: cannot show node "b-rup-1": not found: node "b-rup-1" is not enrolled"#
        ),
        "{}",
        run.stderr
    );

    let run = hydra(&env, &["nodes", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID       NAME     ROLES  DISTRICT   VENUE"),
        "{}",
        run.stdout
    );
    assert_eq!(lines.len(), 5, "header, three nodes, count: {}", run.stdout);
    assert_eq!(lines[4], "3 nodes, 2 online");
    let run = hydra(&env, &["nodes", "show", "b-c7", "--json"]).await;
    let node: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON");
    assert_eq!(
        (node["status"].as_str(), node["drained"].as_bool()),
        (Some("online"), Some(false))
    );
}

#[tokio::test]
async fn errors_name_the_flag_or_carry_the_server_message() {
    let (_dir, server) = start();
    let url = server.url.as_str();

    let run = hydra(&[("HYDRA_SERVER", url)], &["nodes", "list"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unauthorized"), "{}", run.stderr);
    assert!(
        run.stderr.contains("--token or HYDRA_TOKEN"),
        "{}",
        run.stderr
    );

    let env = [("HYDRA_SERVER", url), ("HYDRA_TOKEN", ADMIN_TOKEN)];
    let run = hydra(
        &env,
        &[
            "nodes",
            "enrol",
            "--role",
            "body",
            "--district",
            "b x",
            "--venue",
            "v",
            "--owner",
            "o",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("cannot enrol the node: rejected by the server (400 invalid_request): district may hold only"),
        "{}",
        run.stderr
    );

    let run = hydra(
        &env,
        &[
            "nodes",
            "enrol",
            "--role",
            "body",
            "--district",
            "b",
            "--venue",
            "v",
            "--owner",
            "o",
            "--lan-ip",
            "10.0.0.300",
        ],
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("'--lan-ip <IP>'"), "{}", run.stderr);

    let run = hydra(&env, &["bodies", "eligible"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("--head-id <ID>|--district <DISTRICT>"),
        "{}",
        run.stderr
    );

    let run = hydra(&env, &["nodes", "list", "--server", "127.0.0.1:7070"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("must start with http://"),
        "{}",
        run.stderr
    );

    let run = hydra(&env, &["bodies", "eligible", "--head-id", "nobody"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);

    let (status, list) = call(Method::GET, &server.api("/nodes"), None).await;
    assert_eq!(
        (status, list),
        (200, json!({"nodes": []})),
        "nothing was enrolled"
    );
}

#[tokio::test]
async fn a_dead_replica_in_the_server_list_is_passed_over() {
    let (_dir, server) = start();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("address"))
    };
    let servers = format!("{dead},{}", server.url);
    let env = [
        ("HYDRA_SERVER", servers.as_str()),
        ("HYDRA_TOKEN", ADMIN_TOKEN),
    ];

    let run = hydra(&env, &enrol("h1", "head", "rupelmonde", &[])).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = hydra(&env, &["nodes", "show", "h1", "--json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let node: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON");
    assert_eq!(node["venue"], "rupelmonde");

    let only_dead = [
        ("HYDRA_SERVER", dead.as_str()),
        ("HYDRA_TOKEN", ADMIN_TOKEN),
    ];
    let run = hydra(&only_dead, &["nodes", "list", "--attempts", "1"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains(&format!("no replica answered (tried {dead})")),
        "{}",
        run.stderr
    );
}
