//! `GET /api/v1/bodies/eligible`: the body-selection policy over the registry view (with
//! `explain=true`, its trace); `GET /api/v1/bodies/what-if`: the heads' answers without a venue,
//! district or node.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hydra_api::system::now_ms;
use hydra_api::{
    EligibleParams, EligibleQuery, EligibleResponse, ErrorBody, ExplainedEligible, HeadWhatIf,
    Measurement, SessionWhatIf, WhatIfParams, WhatIfResponse, WithoutQuery,
};
use hydra_core::learning::{HeadReport, explain_learning, select_learning};
use hydra_core::selection::{Head, Observations, strict_venue};
use hydra_core::what_if::what_if as heads_what_if;
use hydra_core::{LatencySample, Role, Transport};
use hydra_proxy::extract::{Json, Query};
use hydra_store::LatencyRecord;

use crate::auth::Caller;
use crate::error::{ApiError, store_error};
use crate::state::AppState;

/// The bodies a head may use, best first, with the policy that chose them.
///
/// With `head_id`: quickroute (same district, venue and owner; a gate), else the cross-venue
/// fallback (same district, usable by the head's owner, ranked by measured latency, ownership,
/// cost tier, idleness, VRAM). Without: strict venue from `district` and `venue`.
/// Any valid token may ask for strict venue; with `head_id`, a node token only for its own
/// head (`403` naming `head_id` otherwise), the admin token for any.
#[utoipa::path(get, path = "/api/v1/bodies/eligible", tag = "bodies", params(EligibleParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Eligible bodies, best first (with explain=true, plus the trace: ExplainedEligible)", body = EligibleResponse),
        (status = 400, description = "Bad parameters, or head_id names a node without the head role", body = ErrorBody),
        (status = 403, description = "A node token asking for another head_id", body = ErrorBody),
        (status = 404, description = "Unknown head_id", body = ErrorBody)))]
pub async fn eligible(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<EligibleParams>,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let explain = params.explain.unwrap_or(false);
    let now = now_ms();
    let settings = state.selection_settings();
    let query =
        EligibleQuery::from_params(params).map_err(|error| ApiError::invalid(error.message))?;
    let (head_id, unreachable, measured) = match query {
        EligibleQuery::Head {
            head_id,
            unreachable,
            measured,
        } => (head_id, unreachable, measured),
        EligibleQuery::StrictVenue { district, venue } => {
            let registry = state.registry().read().expect("registry lock poisoned");
            let selection = strict_venue(
                &district,
                &venue,
                registry.in_district(&district),
                now,
                &settings,
            );
            return Ok(Json(EligibleResponse::from(&selection)).into_response());
        }
    };
    // A node token speaks only for its own head: reading another head's ranking, or recording
    // samples in its name, would let any node reorder that head's bodies.
    if let Caller::Node(node_id) = &caller
        && *node_id != head_id
    {
        return Err(ApiError::forbidden(format!(
            "head_id {head_id:?}: a node token may only ask for its own head"
        )));
    }
    // Every path the head reached, before the samples keep one per body: a WireGuard answer
    // without a LAN one is what marks a body `wg_only` for this head.
    metrics::counter!("hydra_head_probe_reports_total", "outcome" => "measured")
        .increment(measured.len() as u64);
    metrics::counter!("hydra_head_probe_reports_total", "outcome" => "unreachable")
        .increment(unreachable.len() as u64);
    let reached: Vec<(String, Transport)> = measured
        .iter()
        .map(|measurement| (measurement.body_id.clone(), measurement.transport))
        .collect();
    let (place, samples) = head_place(&state, &head_id, measured, now)?;
    record_measured(&state, &head_id, samples).await?;
    let head = Head {
        district: &place.district,
        venue: &place.venue,
        owner: &place.owner,
    };
    let view = learn(&state, &head_id, &reached, &unreachable, now);
    let unreachable: HashSet<String> = unreachable.into_iter().collect();
    let registry = state.registry().read().expect("registry lock poisoned");
    let observations = Observations {
        latency: registry.latency_of(&head_id),
        unreachable: (!unreachable.is_empty()).then_some(&unreachable),
    };
    let bodies: Vec<&hydra_core::Node> = registry.in_district(head.district).collect();
    let selection = select_learning(&head, &bodies, now, &settings, &observations, &view);
    metrics::counter!("hydra_eligible_requests_total", "policy" => selection.policy.as_str())
        .increment(1);
    let answer = EligibleResponse::from(&selection);
    if !explain {
        return Ok(Json(answer).into_response());
    }
    // The same view, time and observations as the answer, under the same lock.
    let explanation = explain_learning(&head, &bodies, now, &settings, &observations, &view);
    Ok(Json(ExplainedEligible::new(answer, &explanation)).into_response())
}

/// Where a head is: what selection needs of it.
struct HeadPlace {
    district: String,
    venue: String,
    owner: String,
}

/// One lookup of the head, under one lock: its place is kept for the selection, and the samples
/// naming a body that is not enrolled (removed since the head probed it) dropped.
fn head_place(
    state: &AppState,
    head_id: &str,
    measured: Vec<Measurement>,
    now: i64,
) -> Result<(HeadPlace, Vec<LatencyRecord>), ApiError> {
    let registry = state.registry().read().expect("registry lock poisoned");
    let head = registry
        .get(head_id)
        .ok_or_else(|| ApiError::not_found(format!("head {head_id:?} is not enrolled")))?;
    if !head.roles.contains(Role::Head) {
        return Err(ApiError::invalid(format!(
            "node {head_id:?} does not have the head role"
        )));
    }
    let samples = latest_samples(head_id, measured, now, |body_id| {
        registry.get(body_id).is_some()
    });
    let place = HeadPlace {
        district: head.district.clone(),
        venue: head.venue.clone(),
        owner: head.owner.clone(),
    };
    Ok((place, samples))
}

/// Records the head's measured latencies durably, in one transaction, then in the view, in a
/// task that runs to its end even if the client hangs up (a restart must not lose what was
/// answered; the view must not lag).
async fn record_measured(
    state: &AppState,
    head_id: &str,
    samples: Vec<LatencyRecord>,
) -> Result<(), ApiError> {
    if samples.is_empty() {
        return Ok(());
    }
    let owner = state.clone();
    let head_of_samples = head_id.to_owned();
    crate::error::run_to_completion("recording measured latencies", async move {
        owner
            .store()
            .record_latencies(&samples)
            .await
            .map_err(store_error)?;
        let mut registry = owner.registry().write().expect("registry lock poisoned");
        for sample in &samples {
            registry.set_latency(
                &head_of_samples,
                &sample.body_id,
                LatencySample {
                    rtt_ms: sample.rtt_ms,
                    measured_at: sample.measured_at,
                },
            );
        }
        Ok(())
    })
    .await
}

/// This replica's memory of what the head said (not stored: a failure is worth remembering for
/// a minute, and a restarted replica relearns it from the next discovery), and what it knows of
/// the head now.
fn learn(
    state: &AppState,
    head_id: &str,
    reached: &[(String, Transport)],
    unreachable: &[String],
    now: i64,
) -> hydra_core::learning::HeadView {
    let mut memory = state.head_memory();
    if !reached.is_empty() || !unreachable.is_empty() {
        memory.record(
            head_id,
            HeadReport {
                unreachable,
                reached,
            },
            now,
        );
    }
    memory.view(head_id, now)
}

/// For every head of the districts that would lose a node: the first body it gets now and the
/// one it would get without `venue:V`, `district:D` or `node:N`; the heads left with nothing;
/// and the live relay sessions on workers that would go away. Admin token; reads only memory.
#[utoipa::path(get, path = "/api/v1/bodies/what-if", tag = "bodies", params(WhatIfParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The heads' answers now and without", body = WhatIfResponse),
        (status = 400, description = "without is missing or not venue:V, district:D or node:N", body = ErrorBody)))]
pub async fn what_if(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<WhatIfParams>,
) -> Result<Json<WhatIfResponse>, ApiError> {
    state.require_admin(&headers)?;
    let text = params
        .without
        .ok_or_else(|| ApiError::invalid("without is required: venue:V, district:D or node:N"))?;
    let without = WithoutQuery::parse(&text).map_err(|error| ApiError::invalid(error.message))?;
    let now = now_ms();
    let settings = state.selection_settings();
    let (heads, removed_workers) = {
        let registry = state.registry().read().expect("registry lock poisoned");
        let nodes = registry.all();
        let outcomes = heads_what_if(&nodes, without.as_core(), now, &settings, |head_id| {
            registry.latency_of(head_id)
        });
        let removed: HashSet<String> = nodes
            .iter()
            .filter(|node| without.as_core().removes(node))
            .map(|node| node.id.clone())
            .collect();
        (
            outcomes.iter().map(HeadWhatIf::from).collect::<Vec<_>>(),
            removed,
        )
    };
    let mut sessions_needing_worker: Vec<SessionWhatIf> = state
        .workers()
        .all()
        .into_iter()
        .filter(|(worker_id, _)| removed_workers.contains(worker_id))
        .flat_map(|(worker_id, info)| {
            let live: HashSet<String> = info.placed.union(&info.reported_live).cloned().collect();
            live.into_iter().map(move |session_id| SessionWhatIf {
                session_id,
                worker_id: worker_id.clone(),
            })
        })
        .collect();
    sessions_needing_worker.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let shortfall = heads
        .iter()
        .filter(|head| head.shortfall)
        .map(|head| head.head_id.clone())
        .collect();
    Ok(Json(WhatIfResponse {
        without: text,
        heads,
        shortfall,
        sessions_needing_worker,
    }))
}

/// The head's measured connect times as store records: one per body (the last one given wins),
/// only for bodies that `enrolled` knows.
fn latest_samples(
    head_id: &str,
    measured: Vec<Measurement>,
    now: i64,
    enrolled: impl Fn(&str) -> bool,
) -> Vec<LatencyRecord> {
    let mut by_body: HashMap<String, (Transport, u32)> = HashMap::new();
    let mut order = Vec::new();
    for Measurement {
        body_id,
        transport,
        rtt_ms,
    } in measured
    {
        if !enrolled(&body_id) {
            continue;
        }
        if by_body
            .insert(body_id.clone(), (transport, rtt_ms))
            .is_none()
        {
            order.push(body_id);
        }
    }
    order
        .into_iter()
        .filter_map(|body_id| {
            let (transport, rtt_ms) = by_body.remove(&body_id)?;
            Some(LatencyRecord {
                head_id: head_id.to_owned(),
                body_id,
                transport,
                rtt_ms,
                measured_at: now,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use hydra_api::Measurement;
    use hydra_core::Transport;

    use super::latest_samples;

    #[test]
    fn samples_are_one_per_enrolled_body_and_the_last_wins() {
        let measured = [
            "b1:lan:3",
            "gone:lan:1",
            "b2:wireguard:40",
            "b1:wireguard:9",
        ]
        .iter()
        .map(|text| text.parse::<Measurement>().unwrap())
        .collect();
        let samples = latest_samples("h1", measured, 77, |body| body != "gone");
        let shown: Vec<_> = samples
            .iter()
            .map(|s| {
                (
                    s.head_id.as_str(),
                    s.body_id.as_str(),
                    s.transport,
                    s.rtt_ms,
                    s.measured_at,
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("h1", "b1", Transport::Wireguard, 9, 77),
                ("h1", "b2", Transport::Wireguard, 40, 77)
            ]
        );
    }
}
