//! Config bundles through the real server (SQLite and PostgreSQL): who may read and replace
//! them, versions, `ETag` and `304`, bad input refused by field with nothing changed, and the
//! SDK and `hydra nodes config show|set` on top.

use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::hydra;
use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, call_as, http};

async fn enrol(server: &ServerProcess, id: &str) -> String {
    let (status, answer) = call(
        Method::POST,
        &server.api("/nodes"),
        Some(json!({"id": id, "roles": ["worker"], "district": "bxl1", "venue": "v", "owner": "acme"})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    answer["token"].as_str().unwrap().to_owned()
}

/// `GET` with `token` and `If-None-Match`; (status, ETag header, body).
async fn get_config(
    server: &ServerProcess,
    id: &str,
    token: &str,
    if_none_match: Option<&str>,
) -> (u16, Option<String>, String) {
    let mut request = http()
        .get(server.api(&format!("/nodes/{id}/config")))
        .bearer_auth(token);
    if let Some(etag) = if_none_match {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await.expect("GET config");
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, etag, response.text().await.unwrap())
}

async fn bundles_are_versioned_guarded_and_validated(setup: ServerSetup) {
    let server = ServerProcess::start(&setup);
    let token = enrol(&server, "w-1").await;
    let other_token = enrol(&server, "w-2").await;
    let url = server.api("/nodes/w-1/config");
    let (_, document) = call(Method::GET, &server.api("/openapi.json"), None).await;
    let path = &document["paths"]["/api/v1/nodes/{id}/config"];
    assert!(
        path["get"]["responses"]["304"].is_object(),
        "GET config and its 304 documented: {path}"
    );
    assert!(
        path["put"]["responses"]["400"].is_object(),
        "PUT config documented: {path}"
    );

    // Nothing set yet: version 0, an empty bundle, readable with the node's own token.
    let (status, etag, body) = get_config(&server, "w-1", &token, None).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["version"], 0);
    assert_eq!(answer["bundle"], json!({}));
    assert_eq!(etag.as_deref(), answer["etag"].as_str());

    // Another node's token may not read it; a node token may not replace it.
    let (status, answer) = call_as(&other_token, Method::GET, &url, None).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("forbidden")));
    let (status, _) = call_as(&token, Method::PUT, &url, Some(json!({}))).await;
    assert_eq!(status, 403);
    let (status, answer) = call(Method::GET, &server.api("/nodes/ghost/config"), None).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    let (status, _) = call(
        Method::PUT,
        &server.api("/nodes/ghost/config"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 404);

    // The admin sets it; the version counts.
    let bundle = json!({"sessions": {"max": 4, "return_url": "/done"},
                        "ice_servers": [{"urls": "stun:stun.example.org"}]});
    let (status, first) = call(Method::PUT, &url, Some(bundle.clone())).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["version"].as_u64(), &first["bundle"]),
        (Some(1), &bundle)
    );

    // Bad input: 400 naming the field, and nothing changes.
    for (bad, field) in [
        (json!({"sessions": {"max": 0}}), "sessions.max"),
        (
            json!({"sessions": {"rating_url": "javascript:x"}}),
            "sessions.rating_url",
        ),
        (
            json!({"ice_servers": [{"urls": ["ftp://x"]}]}),
            "ice_servers[0].urls[0]",
        ),
        (json!({"sessions": {"maximum": 3}}), "maximum"),
    ] {
        let (status, answer) = call(Method::PUT, &url, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad} -> {answer}");
        assert_eq!(answer["error"], "invalid_request");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{bad}: {message:?} does not name {field}"
        );
    }
    let (status, etag, body) = get_config(&server, "w-1", &token, None).await;
    assert_eq!(status, 200);
    let current: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(current, first, "refused bundles changed nothing");
    let etag = etag.expect("an ETag header");

    // Unchanged: 304 with no body, for the exact tag, a list holding it, or a weak form of it.
    for header in [etag.clone(), format!("\"x\", {etag}"), format!("W/{etag}")] {
        let (status, again, body) = get_config(&server, "w-1", &token, Some(&header)).await;
        assert_eq!(
            (status, body.as_str()),
            (304, ""),
            "If-None-Match: {header}"
        );
        assert_eq!(again.as_deref(), Some(etag.as_str()));
    }

    // Replaced: the old tag no longer matches, the version moves on, the bundle is the new one
    // as a whole (not merged).
    let (status, second) = call(Method::PUT, &url, Some(json!({"sessions": {"max": 2}}))).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["version"], 2);
    let (status, _, body) = get_config(&server, "w-1", &token, Some(&etag)).await;
    assert_eq!(status, 200);
    let current: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(current["bundle"], json!({"sessions": {"max": 2}}));

    // The SDK: the first read has the bundle, a read with its tag says "unchanged".
    let client = hydra_client::Client::new({
        let mut config = hydra_client::ClientConfig::new([server.url.clone()]);
        config.token = Some(token.clone());
        config
    })
    .unwrap();
    let read = client
        .node_config("w-1", None)
        .await
        .unwrap()
        .expect("a bundle");
    assert_eq!(read.version, 2);
    assert_eq!(read.bundle.sessions.max, Some(2));
    assert_eq!(
        client.node_config("w-1", Some(&read.etag)).await.unwrap(),
        None
    );

    // A node removed takes its bundle along.
    let (status, _) = call(Method::DELETE, &server.api("/nodes/w-1"), None).await;
    assert_eq!(status, 204);
    enrol(&server, "w-1").await;
    let (_, answer) = call(Method::GET, &url, None).await;
    assert_eq!(answer["version"], 0);
}

#[tokio::test]
async fn bundles_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    bundles_are_versioned_guarded_and_validated(ServerSetup::sqlite(dir.path())).await;
}

#[tokio::test]
async fn bundles_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = ServerSetup::sqlite(dir.path());
    setup.database_url = Some(hydra_store::testing::fresh_postgres_database("bundles").await);
    bundles_are_versioned_guarded_and_validated(setup).await;
}

#[tokio::test]
async fn the_cli_sets_keys_keeps_the_others_and_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    enrol(&server, "w-1").await;
    let env = [
        ("HYDRA_SERVER", server.url.as_str()),
        ("HYDRA_TOKEN", ADMIN_TOKEN),
    ];

    let set = hydra(
        &env,
        &[
            "nodes",
            "config",
            "set",
            "w-1",
            "--sessions-max",
            "4",
            "--ice-servers",
            r#"[{"urls":"turn:t.example.org","username":"u","credential":"s3cret"}]"#,
        ],
    )
    .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert!(
        set.stdout.starts_with("node w-1 config is now version 1\n"),
        "{}",
        set.stdout
    );
    assert!(
        !set.stdout.contains("s3cret"),
        "a credential is not printed: {}",
        set.stdout
    );

    // A second set changes one key and keeps the rest.
    let set = hydra(
        &env,
        &[
            "nodes",
            "config",
            "set",
            "w-1",
            "--return-url",
            "/bye",
            "--unset",
            "ice_servers",
        ],
    )
    .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    let show = hydra(&env, &["nodes", "config", "show", "w-1", "--json"]).await;
    assert_eq!(show.code, 0, "{}", show.stderr);
    let shown: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["version"], 2);
    assert_eq!(
        shown["bundle"],
        json!({"sessions": {"max": 4, "return_url": "/bye"}})
    );

    // Bad input: the server's message naming the field, exit code not 0, nothing changed.
    let bad = hydra(
        &env,
        &["nodes", "config", "set", "w-1", "--sessions-max", "0"],
    )
    .await;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("sessions.max must be between 1 and 1000"),
        "{}",
        bad.stderr
    );
    let show = hydra(&env, &["nodes", "config", "show", "w-1"]).await;
    assert!(
        show.stdout.contains("version:              2\n"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("sessions.max:         4\n"),
        "{}",
        show.stdout
    );
}
