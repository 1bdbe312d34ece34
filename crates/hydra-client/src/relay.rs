//! Relay sessions and workers: the server's session API and the worker report an agent sends.

use std::borrow::Cow;

use hydra_api::{
    CreateSessionRequest, SessionList, SessionQuery, SessionView, WorkerList, WorkerReport,
};
use hydra_core::text::clean_free_text;
use reqwest::Method;

use crate::client::{Call, Kind};
use crate::{Client, ClientError};

impl Client {
    /// `POST /api/v1/sessions`: places a session on the least-loaded healthy worker. Not retried
    /// once it may have reached the server ([`ClientError::Indeterminate`]): list the sessions
    /// before asking again.
    pub async fn create_session(
        &self,
        request: &CreateSessionRequest,
    ) -> Result<SessionView, ClientError> {
        let call = Call::new(Method::POST, Kind::Write, &["sessions"]).with_json(request)?;
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/sessions` with the default query: the newest page of sessions (100).
    pub async fn list_sessions(&self) -> Result<SessionList, ClientError> {
        self.sessions_page(&SessionQuery::default()).await
    }

    /// `GET /api/v1/sessions`: one page of sessions matching `query`, newest first; give the
    /// answer's `next_cursor` as `query.cursor` for the next page.
    pub async fn sessions_page(&self, query: &SessionQuery) -> Result<SessionList, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["sessions"]).with_query(query.to_query());
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/sessions/{id}`: one session; [`ClientError::NotFound`] when unknown.
    pub async fn session(&self, id: &str) -> Result<SessionView, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["sessions", id]);
        self.execute(&call).await?.json()
    }

    /// `DELETE /api/v1/sessions/{id}`: ends a session; the answer is its final view.
    pub async fn end_session(&self, id: &str) -> Result<SessionView, ClientError> {
        let call = Call::new(Method::DELETE, Kind::IdempotentWrite, &["sessions", id]);
        self.execute(&call).await?.json()
    }

    /// `POST /api/v1/sessions/{id}/notice`: the session's page shows that its stream ends in
    /// `ends_in_s` seconds (a drain's deadline); repeating it only moves the end.
    pub async fn notice_session(
        &self,
        id: &str,
        ends_in_s: u32,
    ) -> Result<hydra_api::SessionNotice, ClientError> {
        let call = Call::new(
            Method::POST,
            Kind::IdempotentWrite,
            &["sessions", id, "notice"],
        )
        .with_json(&hydra_api::SessionNotice { ends_in_s })?;
        self.execute(&call).await?.json()
    }

    /// `GET /api/v1/workers`: every worker with its health and load.
    pub async fn list_workers(&self) -> Result<WorkerList, ClientError> {
        let call = Call::new(Method::GET, Kind::Read, &["workers"]);
        self.execute(&call).await?.json()
    }

    /// `POST /api/v1/workers/{id}/report`: what a worker's agent runs and how to reach it
    /// (the node's own token). Idempotent: the latest report wins. Each session's `error` (often
    /// a process log tail) is cleaned of the control characters the server refuses
    /// (`hydra_core::text::clean_free_text`), so one bad log line cannot get the report refused.
    pub async fn report_worker(&self, id: &str, report: &WorkerReport) -> Result<(), ClientError> {
        self.send_worker_report(id, report, None).await
    }

    /// [`Client::report_worker`] with a write id (`Idempotency-Key`): the server applies a
    /// report with that id at most once, so a journal may send it again after a lost answer.
    pub async fn report_worker_with_write_id(
        &self,
        id: &str,
        report: &WorkerReport,
        write_id: u128,
    ) -> Result<(), ClientError> {
        self.send_worker_report(id, report, Some(write_id)).await
    }

    async fn send_worker_report(
        &self,
        id: &str,
        report: &WorkerReport,
        write_id: Option<u128>,
    ) -> Result<(), ClientError> {
        let mut cleaned = None::<WorkerReport>;
        for (index, session) in report.sessions.iter().enumerate() {
            let Some(error) = &session.error else {
                continue;
            };
            if let Cow::Owned(clean) = clean_free_text(error) {
                cleaned.get_or_insert_with(|| report.clone()).sessions[index].error = Some(clean);
            }
        }
        let call = Call::new(
            Method::POST,
            Kind::IdempotentWrite,
            &["workers", id, "report"],
        )
        .with_json(cleaned.as_ref().unwrap_or(report))?
        .with_write_id(write_id);
        self.execute(&call).await.map(drop)
    }
}
