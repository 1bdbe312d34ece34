//! The lab's own calls to the control plane (enrol, heartbeat, move, eligible), made from the
//! lab's namespace over the control network, as an operator's tooling would.

use std::time::Duration;

use anyhow::Context;
use hydra_api::{EligibleResponse, EnrolRequest, EnrolResponse, HeartbeatRequest, MoveRequest};

/// A control-plane endpoint and the admin token.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    base_url: String,
    admin_token: String,
    http: reqwest::Client,
}

impl ControlPlane {
    /// A client for the server at `base_url` (e.g. `http://198.19.255.2:8080`).
    pub fn new(base_url: &str, admin_token: &str) -> anyhow::Result<ControlPlane> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?;
        Ok(ControlPlane {
            base_url: base_url.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            http,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether `GET /api/v1/health` answers 200.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/api/v1/health", self.base_url);
        matches!(self.http.get(url).send().await, Ok(response) if response.status().is_success())
    }

    /// Enrols a node; answers the node and its token.
    pub async fn enrol(&self, request: &EnrolRequest) -> anyhow::Result<EnrolResponse> {
        let url = format!("{}/api/v1/nodes", self.base_url);
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.admin_token)
            .json(request)
            .send()
            .await
            .context("enrolling a node")?;
        json_or_error(response, "enrol").await
    }

    /// Sends one heartbeat for `node_id` with its own token.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        node_token: &str,
        idle: bool,
    ) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/nodes/{node_id}/heartbeat", self.base_url);
        let request = HeartbeatRequest {
            idle,
            active_sessions: 0,
            vram_mb: None,
        };
        let response = self
            .http
            .post(url)
            .bearer_auth(node_token)
            .json(&request)
            .send()
            .await
            .with_context(|| format!("heartbeat of {node_id}"))?;
        ok_or_error(response, "heartbeat").await
    }

    /// Moves a node to another district and venue (e.g. parks a body in `bxl1-test`).
    pub async fn move_node(
        &self,
        node_id: &str,
        district: &str,
        venue: &str,
    ) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/nodes/{node_id}/district", self.base_url);
        let request = MoveRequest {
            district: district.to_owned(),
            venue: venue.to_owned(),
        };
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.admin_token)
            .json(&request)
            .send()
            .await
            .with_context(|| format!("moving {node_id}"))?;
        ok_or_error(response, "move").await
    }

    /// `GET {base_url}{path}` with the admin token (e.g. `/api/v1/nodes/b1`), as JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        json_or_error(response, path).await
    }

    /// The eligible list for `head_id`, as the server answers it.
    pub async fn eligible(&self, head_id: &str) -> anyhow::Result<EligibleResponse> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/bodies/eligible", self.base_url),
            [("head_id", head_id)],
        )?;
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .context("asking for eligible bodies")?;
        json_or_error(response, "eligible").await
    }
}

async fn ok_or_error(response: reqwest::Response, what: &str) -> anyhow::Result<()> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("{what}: HTTP {status}: {body}")
}

async fn json_or_error<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    what: &str,
) -> anyhow::Result<T> {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{what}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: unexpected answer {body}"))
}
