//! One typed method per route of the API, returning the `hydra-api` wire types.
//!
//! Reads (`GET`) go to any replica; writes go to the master. Moves, drains, deletes and
//! heartbeats are idempotent and retried like reads; an enrolment is retried only when it
//! surely never reached the server.

use hydra_api::{
    ConfigBundle, DrainRequest, EligibleResponse, EnrolRequest, EnrolResponse,
    EnrolmentTokenRequest, EnrolmentTokenResponse, ExplainedEligible, Health, HeartbeatRequest,
    MoveRequest, NodeConfig, NodeList, NodeView, WhatIfResponse,
};
use reqwest::Method;

use crate::client::{Call, Kind};
use crate::{Client, ClientError, EligibleQuery};

impl Client {
    /// `POST /api/v1/nodes`: enrols a node; the answer holds its token, which the server never
    /// shows again. Fails with [`ClientError::Indeterminate`] rather than retrying when the
    /// request may have been applied.
    pub async fn enrol(&self, request: &EnrolRequest) -> Result<EnrolResponse, ClientError> {
        let call = Call::new(Method::POST, Kind::Write, &["nodes"]).with_json(request)?;
        self.execute(&call).await?.json()
    }

    /// `POST /api/v1/enrolment-tokens` (admin): a one-time enrolment token, shown once. Not
    /// retried when it may have been applied (a second token would be made).
    pub async fn create_enrolment_token(
        &self,
        request: &EnrolmentTokenRequest,
    ) -> Result<EnrolmentTokenResponse, ClientError> {
        let call =
            Call::new(Method::POST, Kind::Write, &["enrolment-tokens"]).with_json(request)?;
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/nodes`: every enrolled node.
    pub async fn list_nodes(&self) -> Result<NodeList, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["nodes"]);
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/nodes/{id}`: one node; [`ClientError::NotFound`] when unknown.
    pub async fn node(&self, id: &str) -> Result<NodeView, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["nodes", id]);
        self.execute(&call).await?.json()
    }

    /// `DELETE /api/v1/nodes/{id}`: removes a node. A retry after a lost answer may end in
    /// [`ClientError::NotFound`] although the first try removed it.
    pub async fn remove_node(&self, id: &str) -> Result<(), ClientError> {
        let call = Call::new(Method::DELETE, Kind::IdempotentWrite, &["nodes", id]);
        self.execute(&call).await.map(drop)
    }

    /// `POST /api/v1/nodes/{id}/heartbeat`: records the node's load; the node's own token or
    /// the admin token.
    pub async fn heartbeat(
        &self,
        id: &str,
        request: &HeartbeatRequest,
    ) -> Result<NodeView, ClientError> {
        let call = Call::new(
            Method::POST,
            Kind::IdempotentWrite,
            &["nodes", id, "heartbeat"],
        )
        .with_json(request)?;
        self.execute(&call).await?.json()
    }

    /// [`Client::heartbeat`] with a write id (`Idempotency-Key`): the server applies a heartbeat
    /// with that id at most once, so a journal may send it again after a lost answer. The answer's
    /// body is not read (a repeat is answered without the node).
    pub async fn heartbeat_with_write_id(
        &self,
        id: &str,
        request: &HeartbeatRequest,
        write_id: u128,
    ) -> Result<(), ClientError> {
        let call = Call::new(
            Method::POST,
            Kind::IdempotentWrite,
            &["nodes", id, "heartbeat"],
        )
        .with_json(request)?
        .with_write_id(Some(write_id));
        self.execute(&call).await.map(drop)
    }

    /// `POST /api/v1/nodes/{id}/district`: moves a node to another district and venue.
    pub async fn move_node(
        &self,
        id: &str,
        request: &MoveRequest,
    ) -> Result<NodeView, ClientError> {
        let call = Call::new(
            Method::POST,
            Kind::IdempotentWrite,
            &["nodes", id, "district"],
        )
        .with_json(request)?;
        self.execute(&call).await?.json()
    }

    /// `POST /api/v1/nodes/{id}/drain`: drains (`true`) or undrains (`false`) a node.
    pub async fn set_drained(&self, id: &str, drained: bool) -> Result<NodeView, ClientError> {
        let call = Call::new(Method::POST, Kind::IdempotentWrite, &["nodes", id, "drain"])
            .with_json(&DrainRequest { drained })?;
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/bodies/eligible`: the bodies a head may use, best first, and the policy
    /// that chose them.
    pub async fn eligible(&self, query: &EligibleQuery) -> Result<EligibleResponse, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["bodies", "eligible"])
            .with_query(query.query_pairs());
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/bodies/eligible?...&explain=true` (a head's question only): the answer
    /// and, for every node of the head's district, why it was kept or left out.
    pub async fn eligible_explained(
        &self,
        query: &EligibleQuery,
    ) -> Result<ExplainedEligible, ClientError> {
        let mut pairs = query.query_pairs();
        pairs.push(("explain", "true".to_owned()));
        let call = Call::new(Method::GET, Kind::Read, &["bodies", "eligible"]).with_query(pairs);
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/bodies/what-if?without=...` (admin): every affected head's first body now
    /// and without `without` (`venue:V`, `district:D` or `node:N`).
    pub async fn what_if(&self, without: &str) -> Result<WhatIfResponse, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["bodies", "what-if"])
            .with_query(vec![("without", without.to_owned())]);
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/nodes/{id}/config`: the node's config bundle (version 0 when none was set).
    /// With `if_none_match` (the `etag` of the bundle the caller has), `Ok(None)` means it did
    /// not change.
    pub async fn node_config(
        &self,
        id: &str,
        if_none_match: Option<&str>,
    ) -> Result<Option<NodeConfig>, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["nodes", id, "config"])
            .with_if_none_match(if_none_match);
        let answer = self.execute(&call).await?;
        if answer.not_modified() {
            return Ok(None);
        }
        answer.json().map(Some)
    }

    /// `PUT /api/v1/nodes/{id}/config` (admin): replaces the node's bundle; the answer has its
    /// new version. Retried like an idempotent write: a repeat stores the same bundle again
    /// (one more version, same content).
    pub async fn set_node_config(
        &self,
        id: &str,
        bundle: &ConfigBundle,
    ) -> Result<NodeConfig, ClientError> {
        let call = Call::new(Method::PUT, Kind::IdempotentWrite, &["nodes", id, "config"])
            .with_json(bundle)?;
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/health` of whichever replica answers.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["health"]);
        self.execute(&call).await?.json()
    }
}
