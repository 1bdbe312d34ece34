//! The field's controller config file loads into `hydra server`'s settings as it is.

use super::*;

fn field_file(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/field")).join(name)
}

#[test]
fn the_field_s_controller_file_loads_as_it_is() {
    let args = Args {
        config: Some(field_file("controller.yaml")),
        ..Args::default()
    };
    let config = resolve(&args).unwrap();
    let loaded = format!(
        "listen {}\nadmin_token set {}\ndomain {:?}\nheartbeat_timeout {}",
        config.listen,
        config.admin_token.is_some(),
        config.domain,
        config.heartbeat_timeout,
    );
    expect_test::expect![[r#"
        listen 0.0.0.0:47990
        admin_token set true
        domain Some("relay.example.org")
        heartbeat_timeout 60"#]]
    .assert_eq(&loaded);
}

#[test]
fn server_durations_take_units_and_unknown_keys_name_their_line_and_hydra_name() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let path = dir.path().join("hydra.yaml");
        std::fs::write(&path, text).unwrap();
        Args {
            config: Some(path),
            ..Args::default()
        }
    };
    let config = resolve(&write(
        "heartbeat_timeout: 90\nsession_retention: 3600\nlease_ttl: 6s\nidle_timeout: 2m\n",
    ))
    .unwrap();
    assert_eq!(
        (
            config.heartbeat_timeout,
            config.session_retention,
            config.lease_ttl,
            config.idle_timeout
        ),
        (90.0, 3600.0, 6.0, 120.0)
    );
    let errors: Vec<String> = [
        "mode: controller\nserver:\n  listen: \":47990\"\nsessions:\n  max: 10\n",
        "listen: 127.0.0.1:1\ncolour: red\n",
        "mode: worker\n",
        "workers:\n  heartbeat_timeout: soon\n",
    ]
    .iter()
    .map(|text| {
        resolve(&write(text))
            .unwrap_err()
            .to_string()
            .replace(&dir.path().display().to_string(), "<dir>")
    })
    .collect();
    expect_test::expect![[r#"
        [
            "unknown key \"sessions.max\" in config file <dir>/hydra.yaml line 5 (Hydra calls it max_sessions_per_worker)",
            "unknown key \"colour\" in config file <dir>/hydra.yaml line 2",
            "config file <dir>/hydra.yaml: mode is \"worker\" but this daemon runs mode controller; a worker file is for `hydra agent --config FILE`",
            "configuration key \"heartbeat_timeout\": \"soon\" is not a duration (seconds, or a number with a unit: 60s, 10m, 7d) (from config file <dir>/hydra.yaml)",
        ]
    "#]]
    .assert_debug_eq(&errors);
}
