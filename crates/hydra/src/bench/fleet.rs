//! The bench's synthetic fleet: its layout, and enrolling, heartbeating and removing it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use futures::StreamExt;
use hydra_api::{CostTierWire, EnrolRequest, HeartbeatRequest, RoleWire};
use hydra_client::{Client, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// Bodies per venue in the synthetic fleet: eligible answers stay small, as in the field.
pub(super) const BODIES_PER_VENUE: usize = 10;
/// Venues per district.
pub(super) const VENUES_PER_DISTRICT: usize = 8;
/// Organisations per district.
pub(super) const OWNERS_PER_DISTRICT: usize = 4;

/// The synthetic fleet: enrolment requests, in order.
#[derive(Debug)]
pub(super) struct FleetPlan {
    pub(super) bodies: Vec<EnrolRequest>,
    pub(super) heads: Vec<EnrolRequest>,
    /// Indexes of bodies that never heartbeat (they stay offline).
    pub(super) silent_bodies: usize,
    pub(super) venues: usize,
    pub(super) districts: usize,
}

/// Lays out `body_count` bodies: 10 per venue, 8 venues per district, 4 organisations per
/// district. In a venue 8 bodies belong to the venue's organisation, 2 to a neighbour (one of
/// them shared with a third via `allowed_orgs`); one body in 10 stays offline. One head per
/// venue: three in four belong to the venue's organisation (quickroute), the fourth to an
/// organisation without a body there (cross-venue).
pub(super) fn plan_fleet(body_count: usize, tag: &str, rng: &mut StdRng) -> FleetPlan {
    let venues = body_count.div_ceil(BODIES_PER_VENUE);
    let districts = venues.div_ceil(VENUES_PER_DISTRICT);
    let org =
        |district: usize, slot: usize| format!("org{district}-{}", slot % OWNERS_PER_DISTRICT);
    let district_name = |district: usize| format!("bench-{tag}-d{district:03}");
    let venue_name = |venue: usize| format!("v{}", venue % VENUES_PER_DISTRICT);
    let mut bodies = Vec::with_capacity(body_count);
    for index in 0..body_count {
        let venue = index / BODIES_PER_VENUE;
        let district = venue / VENUES_PER_DISTRICT;
        let slot = venue % VENUES_PER_DISTRICT;
        let position = index % BODIES_PER_VENUE;
        let (owner, allowed_orgs, cost_tier) = match position {
            0..=7 => (org(district, slot), vec![], CostTierWire::Owned),
            8 => (org(district, slot + 1), vec![], CostTierWire::Shared),
            _ => (
                org(district, slot + 1),
                vec![org(district, slot + 2)],
                CostTierWire::Leased,
            ),
        };
        let number = u32::try_from(index).unwrap_or(u32::MAX);
        let [_, high, middle, low] = number.to_be_bytes();
        bodies.push(EnrolRequest {
            id: Some(format!("bench-{tag}-b{index:06}")),
            name: None,
            roles: vec![RoleWire::Body],
            district: district_name(district),
            venue: venue_name(venue),
            owner,
            allowed_orgs,
            lan_ip: Some(IpAddr::V4(Ipv4Addr::new(10, high, middle, low))),
            wg_ip: Some(IpAddr::V4(Ipv4Addr::new(100, 64 + high, middle, low))),
            vram_mb: Some([8_192, 12_288, 16_384, 24_576, 49_152][rng.random_range(0..5)]),
            cost_tier,
        });
    }
    let heads = (0..venues)
        .map(|venue| {
            let district = venue / VENUES_PER_DISTRICT;
            let slot = venue % VENUES_PER_DISTRICT;
            let owner = if venue % 4 == 3 {
                org(district, slot + 3)
            } else {
                org(district, slot)
            };
            EnrolRequest {
                id: Some(format!("bench-{tag}-h{venue:05}")),
                roles: vec![RoleWire::Head],
                district: district_name(district),
                venue: venue_name(venue),
                owner,
                ..EnrolRequest::default()
            }
        })
        .collect();
    FleetPlan {
        silent_bodies: body_count / BODIES_PER_VENUE,
        bodies,
        heads,
        venues,
        districts,
    }
}

/// Whether body `index` of the plan heartbeats (position 7 of each venue stays offline).
pub(super) fn heartbeats(index: usize) -> bool {
    index % BODIES_PER_VENUE != 7
}
/// Runs `task` over `items` with at most `concurrency` in flight; results in completion order.
pub(super) async fn bounded<Item, Output, Task, Fut>(
    items: Vec<Item>,
    concurrency: u32,
    task: Task,
) -> Vec<Output>
where
    Task: Fn(Item) -> Fut,
    Fut: Future<Output = Output>,
{
    let limit = usize::try_from(concurrency).unwrap_or(1).max(1);
    futures::stream::iter(items.into_iter().map(task))
        .buffer_unordered(limit)
        .collect()
        .await
}

/// A fleet enrolled on the server, with every node's token.
pub(super) struct EnrolledFleet {
    pub(super) bodies: Vec<(String, String)>,
    pub(super) heads: Vec<String>,
}

impl EnrolledFleet {
    pub(super) fn all_ids(&self) -> Vec<String> {
        self.bodies
            .iter()
            .map(|(id, _)| id.clone())
            .chain(self.heads.iter().cloned())
            .collect()
    }
}

/// Enrols every body and head of the plan; on failure, removes what it enrolled.
pub(super) async fn enrol_fleet(
    client: &Client,
    plan: &FleetPlan,
    concurrency: u32,
) -> anyhow::Result<EnrolledFleet> {
    let requests: Vec<EnrolRequest> = plan.bodies.iter().chain(&plan.heads).cloned().collect();
    let total = requests.len();
    let started = Instant::now();
    let outcomes = bounded(requests, concurrency, |request| {
        let client = client.clone();
        async move { client.enrol(&request).await }
    })
    .await;
    let mut fleet = EnrolledFleet {
        bodies: Vec::new(),
        heads: Vec::new(),
    };
    let mut first_error: Option<ClientError> = None;
    for outcome in outcomes {
        match outcome {
            Ok(enrolled) if enrolled.node.roles.contains(&RoleWire::Head) => {
                fleet.heads.push(enrolled.node.id)
            }
            Ok(enrolled) => fleet.bodies.push((enrolled.node.id, enrolled.token)),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        remove_fleet(client, fleet.all_ids(), concurrency).await;
        return Err(anyhow::anyhow!("cannot enrol the bench fleet: {error}"));
    }
    fleet.bodies.sort();
    fleet.heads.sort();
    tracing::info!(
        nodes = total,
        seconds = started.elapsed().as_secs_f64(),
        "[bench] fleet enrolled"
    );
    Ok(fleet)
}

/// What a simulated body reports: idle, or streaming one session.
pub(super) fn load_report(idle: bool) -> HeartbeatRequest {
    HeartbeatRequest {
        idle,
        active_sessions: u32::from(!idle),
        vram_mb: None,
    }
}

/// Heartbeats every body that should be online, each with its own token.
pub(super) async fn heartbeat_fleet(
    client: &Client,
    fleet: &EnrolledFleet,
    concurrency: u32,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let beats: Vec<(String, String, bool)> = fleet
        .bodies
        .iter()
        .enumerate()
        .filter(|(index, _)| heartbeats(*index))
        .map(|(_, (id, token))| (id.clone(), token.clone(), rng.random_bool(0.7)))
        .collect();
    let outcomes = bounded(beats, concurrency, |(id, token, idle)| {
        let node = client.with_token(token);
        async move { node.heartbeat(&id, &load_report(idle)).await }
    })
    .await;
    if let Some(Err(error)) = outcomes.into_iter().find(Result::is_err) {
        anyhow::bail!("cannot heartbeat the bench fleet: {error}");
    }
    Ok(())
}

/// Removes the bench's nodes (best effort, logged).
pub(super) async fn remove_fleet(client: &Client, ids: Vec<String>, concurrency: u32) {
    let total = ids.len();
    let outcomes = bounded(ids, concurrency, |id| {
        let client = client.clone();
        async move { client.remove_node(&id).await }
    })
    .await;
    let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
    if failed > 0 {
        tracing::warn!(
            failed,
            total,
            "[bench] some bench nodes could not be removed"
        );
    } else {
        tracing::info!(total, "[bench] bench nodes removed");
    }
}
#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn the_fleet_has_about_ten_bodies_per_venue_and_a_head_in_each() {
        let plan = plan_fleet(1_005, "t", &mut StdRng::seed_from_u64(1));
        assert_eq!(plan.bodies.len(), 1_005);
        assert_eq!(plan.venues, 101);
        assert_eq!(plan.heads.len(), 101);
        assert_eq!(plan.districts, 13);
        let mut per_venue: HashMap<(String, String), usize> = HashMap::new();
        for body in &plan.bodies {
            *per_venue
                .entry((body.district.clone(), body.venue.clone()))
                .or_default() += 1;
        }
        assert_eq!(per_venue.len(), 101);
        assert!(per_venue.values().all(|count| *count <= BODIES_PER_VENUE));
        let ids: HashSet<&Option<String>> = plan
            .bodies
            .iter()
            .chain(&plan.heads)
            .map(|node| &node.id)
            .collect();
        assert_eq!(ids.len(), 1_005 + 101, "ids are unique");
        let lan: HashSet<_> = plan.bodies.iter().map(|body| body.lan_ip).collect();
        assert_eq!(lan.len(), 1_005, "LAN addresses are unique");
    }

    #[test]
    fn one_head_in_four_has_no_body_of_its_owner_in_its_venue() {
        let plan = plan_fleet(400, "t", &mut StdRng::seed_from_u64(1));
        let mut quickroute = 0;
        for head in &plan.heads {
            let own_body_here = plan.bodies.iter().any(|body| {
                body.district == head.district
                    && body.venue == head.venue
                    && body.owner == head.owner
            });
            let own_body_in_district = plan
                .bodies
                .iter()
                .any(|body| body.district == head.district && body.owner == head.owner);
            assert!(own_body_in_district, "{:?} has a fallback", head.id);
            quickroute += usize::from(own_body_here);
        }
        assert_eq!(quickroute, 30, "40 venues, 3 in 4 heads hit quickroute");
    }
}
