//! The dashboard at `/` in a real headless Chromium against the real server process: it loads
//! from the binary, asks for the token once, shows a node going offline when its heartbeats stop,
//! drains a node on the server, explains why a drained body was left out, and passes axe-core
//! with no serious or critical violation. Screenshots go to `target/tmp/dashboard/`.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::browser::Browser;
use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually};

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
    browser.assert_axe_clean().await;
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

/// The page's own cost with a big fleet, fed through the same `apply()` the event stream calls:
/// the first view of 10,000 nodes, then 100 changes a second for 5 s. Asserts only what is on
/// the page; the figures (first view, longest frame gap) go to `target/tmp/dashboard/perf.txt`.
#[tokio::test]
async fn ten_thousand_nodes_render_and_take_a_hundred_changes_a_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    let mut browser = Browser::start().await;
    browser.open(&server.url).await;
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
                "document.getElementById('live').textContent === 'Live'"
            )
            .await
    );
    let figures = browser
        .eval(
            r#"(async () => {
                const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
                const venues = ["rupelmonde", "cloud-seven", "ghent", "zuid", "noord"];
                const list = [];
                for (let i = 0; i < 10000; i++) {
                    list.push({id: "n-" + i, name: "n-" + i, roles: i % 10 === 0 ? ["head"] : ["body"],
                        district: i % 2 ? "bxl1" : "ams1", venue: venues[i % 5], owner: "acme",
                        allowed_orgs: [], lan_ip: null, wg_ip: null, vram_mb: 16384, cost_tier: "owned",
                        drained: false, idle: true, active_sessions: 0, status: "online",
                        last_heartbeat: new Date().toISOString(), enrolled_at: new Date().toISOString()});
                }
                const start = performance.now();
                apply("snapshot", {nodes: list, heartbeat_timeout_ms: 60000});
                await frame(); await frame();
                const firstView = performance.now() - start;
                const venuesShown = document.querySelectorAll("details[data-venue-details]").length;
                const openStart = performance.now();
                const first = document.querySelector("details[data-venue-details]");
                first.open = true;
                await frame(); await frame();
                const openVenue = performance.now() - openStart;
                const rows = document.querySelectorAll("tr[data-node-id]").length;
                const target = first.querySelector("tr[data-node-id]").dataset.nodeId;
                let longestGap = 0, last = performance.now(), running = true;
                const watch = () => { const now = performance.now(); longestGap = Math.max(longestGap, now - last); last = now; if (running) requestAnimationFrame(watch); };
                requestAnimationFrame(watch);
                let changes = 0;
                await new Promise((resolve) => {
                    const timer = setInterval(() => {
                        const node = Object.assign({}, list[(changes * 7919) % list.length]);
                        node.active_sessions = changes;
                        apply("node_changed", node);
                        if (++changes >= 500) { clearInterval(timer); resolve(); }
                    }, 10);
                });
                apply("node_changed", Object.assign({}, list.find((node) => node.id === target), {active_sessions: 4242}));
                await frame(); await frame();
                running = false;
                const cell = document.querySelector('tr[data-node-id="' + target + '"] td.wide').textContent;
                return {firstView, venuesShown, openVenue, rows, longestGap, changes, lastCell: cell};
            })()"#,
        )
        .await;
    // Ten venues (two districts of five), folded; the first one opened holds its 1,000 nodes.
    assert_eq!(figures["venuesShown"], 10, "{figures}");
    assert_eq!(figures["rows"], 1_000, "{figures}");
    assert_eq!(
        figures["lastCell"], "4242",
        "the last change is on the page: {figures}"
    );
    let text = format!(
        "10,000 nodes: first view {:.0} ms (venues folded); opening a venue of 1,000: {:.0} ms; \
         500 changes at 100/s: longest frame gap {:.0} ms\n",
        figures["firstView"].as_f64().unwrap(),
        figures["openVenue"].as_f64().unwrap(),
        figures["longestGap"].as_f64().unwrap()
    );
    std::fs::write(artifacts().join("perf.txt"), &text).expect("write the figures");
    eprint!("{text}");
}
