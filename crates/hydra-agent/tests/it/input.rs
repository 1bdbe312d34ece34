//! The agent's body parser applies the API's text rule (`hydra_api::text`): a control character
//! in any field of a request is a 400 naming the field, and nothing starts.

use crate::proxy::Agent;

const API_TOKEN: &str = "test-api-token";

#[tokio::test]
async fn a_control_character_in_a_start_request_is_refused_naming_the_field() {
    let agent = Agent::start().await;
    let http = reqwest::Client::new();
    for (body, field) in [
        (
            serde_json::json!({"session_id": "s-1", "body_ip": "127.0.0.1\u{0}"}),
            "body_ip",
        ),
        (
            serde_json::json!({"session_id": "s-1\r\n", "body_ip": "127.0.0.1"}),
            "session_id",
        ),
        (
            serde_json::json!({"session_id": "s-1", "body_ip": "127.0.0.1", "experience": "game\u{7}"}),
            "experience",
        ),
    ] {
        let answer = http
            .post(agent.url("/api/v1/sessions"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{body}");
        let error: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(error["error"], "invalid_request");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{field} contains a control character")),
            "{error}"
        );
    }
    assert!(agent.worker.snapshot().is_empty(), "nothing started");
}
