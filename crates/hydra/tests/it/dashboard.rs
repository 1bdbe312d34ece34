//! The dashboard at `/` in a real headless Chromium against the real server process: it loads
//! from the binary, asks for the token once, shows a node going offline when its heartbeats stop,
//! drains a node on the server, explains why a drained body was left out, and passes axe-core
//! with no serious or critical violation. Screenshots go to `target/tmp/dashboard/`.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::browser::Browser;
use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually};

/// axe-core from npm, vendored (see `tests/assets/README.md`).
const AXE: &str = include_str!("../assets/axe.min.js");

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

async fn enrol(server: &ServerProcess, id: &str, role: &str, venue: &str) {
    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(
            json!({"id": id, "roles": [role], "district": "bxl1", "venue": venue,
                    "owner": "acme", "vram_mb": 16384}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
}

async fn heartbeat(server: &ServerProcess, id: &str) {
    let (status, answer) = call(
        Method::POST,
        &server.api(&format!("/nodes/{id}/heartbeat")),
        Some(json!({"idle": true})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

fn status_cell(id: &str) -> String {
    format!(
        "document.querySelector('tr[data-node-id=\"{id}\"] [data-field=\"status\"]')?.textContent"
    )
}

#[tokio::test]
async fn the_dashboard_shows_drains_and_explains_the_fleet_in_chromium() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.extra = vec!["--heartbeat-timeout".into(), "2".into()];
    let server = ServerProcess::start(&setup);
    enrol(&server, "b-rup", "body", "rupelmonde").await;
    enrol(&server, "b-c7", "body", "cloud-seven").await;
    enrol(&server, "h-rup", "head", "rupelmonde").await;
    heartbeat(&server, "b-c7").await;
    // b-rup and the head keep heartbeating for the whole test; b-c7 heartbeats only once.
    let stop = CancellationToken::new();
    let keep_alive = {
        let (stop, api) = (stop.clone(), server.api(""));
        tokio::spawn(async move {
            for _ in 0..600 {
                for id in ["b-rup", "h-rup"] {
                    let _ = crate::support::http()
                        .post(format!("{api}/nodes/{id}/heartbeat"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"idle": true}))
                        .send()
                        .await;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(400)) => {}
                }
            }
        })
    };
    heartbeat(&server, "b-rup").await;

    let mut browser = Browser::start().await;
    // axe-core is injected through DevTools; the page's own CSP stays strict for everything else.
    browser
        .command("Page.setBypassCSP", json!({"enabled": true}))
        .await;
    browser.open(&server.url).await;
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                "!document.getElementById('token-panel').hidden"
            )
            .await,
        "the page asks for the token"
    );
    browser
        .eval(&format!(
            "document.getElementById('token-input').value = '{ADMIN_TOKEN}';
             document.getElementById('token-form').requestSubmit(); true"
        ))
        .await;
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                &format!("{} === 'online'", status_cell("b-rup"))
            )
            .await,
        "the fleet appears live"
    );
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('hydra-admin-token')")
            .await,
        json!(ADMIN_TOKEN)
    );
    assert!(
        !browser
            .eval("location.href")
            .await
            .as_str()
            .unwrap()
            .contains(ADMIN_TOKEN),
        "the token never goes in the URL"
    );
    browser
        .screenshot(1280, 900, false, &artifacts().join("fleet-desktop.png"))
        .await;

    // b-c7's heartbeats stopped: the page shows it offline without a reload.
    assert!(
        browser
            .until(
                Duration::from_secs(15),
                &format!("{} === 'offline'", status_cell("b-c7"))
            )
            .await,
        "b-c7 turns offline on the page; it shows {}",
        browser.eval(&status_cell("b-c7")).await
    );
    assert_eq!(browser.eval(&status_cell("b-rup")).await, json!("online"));

    // Drain from the page: the server has it drained.
    browser
        .eval("document.querySelector('tr[data-node-id=\"b-rup\"] button[data-action=\"drain\"]').click(); true")
        .await;
    let drained = eventually(Duration::from_secs(10), async || {
        let (_, node) = call(Method::GET, &server.api("/nodes/b-rup"), None).await;
        node["drained"] == json!(true)
    })
    .await;
    assert!(drained, "the drain reached the server");
    assert!(
        browser
            .until(
                Duration::from_secs(10),
                &format!("{} === 'drained'", status_cell("b-rup"))
            )
            .await
    );

    // The explain trace on the head says why the drained body was left out.
    browser
        .eval("document.querySelector('tr[data-node-id=\"h-rup\"] button[data-action=\"explain\"]').click(); true")
        .await;
    let why = "document.querySelector('#explain-table tr[data-explain-id=\"b-rup\"] [data-field=\"why\"]')?.textContent";
    assert!(
        browser
            .until(Duration::from_secs(10), &format!("{why} === 'drained'"))
            .await,
        "the trace gives the reason; it shows {}",
        browser.eval(why).await
    );
    browser
        .screenshot(1280, 900, false, &artifacts().join("explain-desktop.png"))
        .await;
    browser
        .screenshot(390, 844, true, &artifacts().join("fleet-phone.png"))
        .await;

    // axe-core: no serious or critical violation, on the phone layout and the desktop one.
    browser.eval(&format!("{AXE}\n;true")).await;
    for (width, height, mobile) in [(390, 844, true), (1280, 900, false)] {
        browser
            .command(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
            )
            .await;
        let violations: Value = browser
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
    stop.cancel();
    keep_alive.await.expect("heartbeat task");
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let response = crate::support::http()
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .expect("get asset");
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
}
