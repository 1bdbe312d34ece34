//! `hydra bodies`: ask the server which bodies a head may use.

use std::process::ExitCode;

use hydra_api::{
    EligibleResponse, ExplainEntry, ExplainedEligible, PolicyWire, RankKeyWire, WhatIfResponse,
};
use hydra_client::EligibleQuery;

use crate::client_args::ClientArgs;
use crate::nodes::tier_word;
use crate::output::{Table, or_dash, print, print_json, yes_no};

/// Subcommands of `hydra bodies`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the bodies a head may stream from, best first, and the policy that chose them:
    /// quickroute (the head's own venue and owner), else cross-venue (same district, usable by
    /// the head's owner); or, with --district and --venue, the strict-venue list of old clients.
    Eligible(EligibleArgs),
    /// For every head of the districts that would lose a node: the body it gets now and the one
    /// it would get without a venue, district or node; heads left with nothing; relay sessions
    /// that would need a new worker (admin token).
    WhatIf(WhatIfArgs),
}

/// Options of `hydra bodies what-if`.
#[derive(Debug, clap::Args)]
pub struct WhatIfArgs {
    /// What to take away: `venue:<venue>`, `district:<district>` or `node:<id>`.
    #[arg(long, value_name = "KIND:NAME")]
    without: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `hydra bodies eligible`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("question").required(true).args(["head_id", "district"])))]
pub struct EligibleArgs {
    /// The head asking (its node id).
    #[arg(long, value_name = "ID", conflicts_with_all = ["district", "venue"])]
    head_id: Option<String>,
    /// Strict venue: the district (with --venue, without --head-id).
    #[arg(long, value_name = "DISTRICT", requires = "venue")]
    district: Option<String>,
    /// Strict venue: the venue (with --district, without --head-id).
    #[arg(long, value_name = "VENUE", requires = "district")]
    venue: Option<String>,
    /// A body the head could not reach, left out of this answer; repeat or separate with
    /// commas (with --head-id).
    #[arg(long, value_name = "ID", value_delimiter = ',', requires = "head_id")]
    unreachable: Vec<String>,
    /// Also say, for every node of the head's district, why it was kept (its rank keys in
    /// order) or left out (with --head-id).
    #[arg(long, requires = "head_id")]
    explain: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Eligible(args) => eligible(args).await,
        Command::WhatIf(args) => what_if(args).await,
    }
}

async fn what_if(args: WhatIfArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let answer = client
        .what_if(&args.without)
        .await
        .map_err(|error| args.client.explain(error, "cannot answer what-if"))?;
    if args.client.json {
        print_json(&answer)?;
    } else {
        print(&what_if_text(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per head, then the shortfall and the sessions to move.
fn what_if_text(answer: &WhatIfResponse) -> String {
    let mut text = format!("without {}: {} heads\n", answer.without, answer.heads.len());
    if !answer.heads.is_empty() {
        let mut table = Table::new(&["HEAD", "VENUE", "BODY_NOW", "BODY_WITHOUT", "SHORTFALL"]);
        for head in &answer.heads {
            let without = if head.head_removed {
                "(head removed)".to_owned()
            } else {
                format!(
                    "{} ({})",
                    head.body_without.as_deref().unwrap_or("-"),
                    head.policy_without
                )
            };
            table.row(vec![
                head.head_id.clone(),
                head.venue.clone(),
                format!(
                    "{} ({})",
                    head.body_now.as_deref().unwrap_or("-"),
                    head.policy_now
                ),
                without,
                yes_no(head.shortfall),
            ]);
        }
        text.push_str(&table.render());
    }
    text.push_str(&format!(
        "shortfall: {}\n",
        if answer.shortfall.is_empty() {
            "none".to_owned()
        } else {
            answer.shortfall.join(", ")
        }
    ));
    for session in &answer.sessions_needing_worker {
        text.push_str(&format!(
            "session {} on worker {} would need a new worker\n",
            session.session_id, session.worker_id
        ));
    }
    text
}

async fn eligible(args: EligibleArgs) -> anyhow::Result<ExitCode> {
    let query = match (&args.head_id, &args.district, &args.venue) {
        (Some(head_id), _, _) => EligibleQuery::Head {
            head_id: head_id.clone(),
            unreachable: args.unreachable.clone(),
            measured: Vec::new(),
        },
        (None, Some(district), Some(venue)) => EligibleQuery::strict_venue(district, venue),
        _ => anyhow::bail!("give --head-id, or both --district and --venue"),
    };
    let client = args.client.client()?;
    if args.explain {
        let answer = client
            .eligible_explained(&query)
            .await
            .map_err(|error| args.client.explain(error, "cannot list eligible bodies"))?;
        if args.client.json {
            print_json(&answer)?;
        } else {
            print(&format!(
                "{}{}",
                eligible_text(&answer.eligible),
                explain_text(&answer)
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let answer = client
        .eligible(&query)
        .await
        .map_err(|error| args.client.explain(error, "cannot list eligible bodies"))?;
    if args.client.json {
        print_json(&answer)?;
    } else {
        print(&eligible_text(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// What the policy word means, for people.
fn policy_meaning(policy: PolicyWire) -> &'static str {
    match policy {
        PolicyWire::Quickroute => "bodies in the head's own venue, of its owner",
        PolicyWire::CrossVenue => {
            "no usable body in the head's venue; bodies elsewhere in its district"
        }
        PolicyWire::StrictVenue => "bodies in exactly the district and venue asked for",
        PolicyWire::None => "no eligible body",
    }
}

/// The policy line, then one row per body in order.
fn eligible_text(answer: &EligibleResponse) -> String {
    let count = answer.bodies.len();
    let plural = if count == 1 { "body" } else { "bodies" };
    let mut text = format!(
        "policy: {} ({}), {count} {plural}\n",
        answer.policy,
        policy_meaning(answer.policy)
    );
    if answer.bodies.is_empty() {
        return text;
    }
    let mut table = Table::new(&[
        "ID",
        "VENUE",
        "SAME_VENUE",
        "LAN_IP",
        "WG_IP",
        "IDLE",
        "VRAM_MB",
        "TIER",
        "RTT_MS",
    ]);
    for body in &answer.bodies {
        table.row(vec![
            body.id.clone(),
            body.venue.clone(),
            yes_no(body.same_venue),
            or_dash(body.lan_ip),
            or_dash(body.wg_ip),
            yes_no(body.idle),
            or_dash(body.vram_mb),
            tier_word(body.cost_tier).to_owned(),
            if body.wg_only {
                format!("{} (wg_only)", or_dash(body.rtt_ms))
            } else {
                or_dash(body.rtt_ms)
            },
        ]);
    }
    text.push_str(&table.render());
    text
}

/// The trace as a table: one row per node of the head's district, kept ones first.
fn explain_text(answer: &ExplainedEligible) -> String {
    let mut table = Table::new(&["NODE", "VENUE", "OWNER", "VERDICT", "WHY"]);
    for entry in &answer.explain {
        let (verdict, why) = verdict_words(entry);
        table.row(vec![
            entry.id.clone(),
            entry.venue.clone(),
            entry.owner.clone(),
            verdict,
            why,
        ]);
    }
    format!("why:\n{}", table.render())
}

/// `kept #N` with its rank keys in order, or `left out` with the reason in words.
fn verdict_words(entry: &ExplainEntry) -> (String, String) {
    if let Some(reason) = entry.reason {
        let why = match reason {
            hydra_api::LeftOutWire::NotABody => "not a body",
            hydra_api::LeftOutWire::Offline => "offline (no recent heartbeat)",
            hydra_api::LeftOutWire::Drained => "drained",
            hydra_api::LeftOutWire::OtherOwner => "other owner, not in allowed_orgs",
            hydra_api::LeftOutWire::NamedUnreachable => "named unreachable by the head",
            hydra_api::LeftOutWire::LearnedUnreachable => {
                "reported unreachable on both paths by the head (remembered)"
            }
            hydra_api::LeftOutWire::QuickrouteOpen => "quickroute has a body in the head's venue",
        };
        return ("left out".to_owned(), why.to_owned());
    }
    let keys: Vec<String> = entry
        .keys
        .iter()
        .map(|key| match key {
            RankKeyWire::Latency { rtt_ms, age_ms } => {
                format!("latency {rtt_ms} ms ({} s old)", age_ms / 1_000)
            }
            RankKeyWire::Unmeasured => "unmeasured".to_owned(),
            RankKeyWire::Own { own } => (if *own { "own" } else { "shared" }).to_owned(),
            RankKeyWire::CostTier { cost_tier } => tier_word(*cost_tier).to_owned(),
            RankKeyWire::Idle { idle } => (if *idle { "idle" } else { "busy" }).to_owned(),
            RankKeyWire::VramMb { vram_mb } => format!("{vram_mb} MB VRAM"),
        })
        .collect();
    (
        format!("kept #{}", entry.rank.unwrap_or(0)),
        keys.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use hydra_api::{CostTierWire, EligibleBody};

    use super::*;

    fn body(id: &str, venue: &str, same_venue: bool, rtt_ms: Option<u32>) -> EligibleBody {
        EligibleBody {
            id: id.into(),
            name: id.into(),
            district: "bxl1".into(),
            venue: venue.into(),
            owner: "acme".into(),
            lan_ip: Some("10.1.0.7".parse().unwrap()),
            wg_ip: Some("100.64.0.7".parse().unwrap()),
            vram_mb: Some(16_384),
            idle: !same_venue,
            cost_tier: CostTierWire::Shared,
            same_venue,
            rtt_ms,
            wg_only: false,
        }
    }

    #[test]
    fn says_the_policy_and_lists_bodies_in_order() {
        let cases = [
            EligibleResponse {
                policy: PolicyWire::CrossVenue,
                bodies: vec![
                    body("body-7", "cloud-seven", false, Some(12)),
                    body("body-3", "antwerp", false, None),
                ],
            },
            EligibleResponse {
                policy: PolicyWire::None,
                bodies: vec![],
            },
        ];
        let text: String = cases.iter().map(eligible_text).collect();
        expect_test::expect![[r#"
            policy: cross_venue (no usable body in the head's venue; bodies elsewhere in its district), 2 bodies
            ID      VENUE        SAME_VENUE  LAN_IP    WG_IP       IDLE  VRAM_MB  TIER    RTT_MS
            body-7  cloud-seven  no          10.1.0.7  100.64.0.7  yes   16384    shared  12
            body-3  antwerp      no          10.1.0.7  100.64.0.7  yes   16384    shared  -
            policy: none (no eligible body), 0 bodies
        "#]]
        .assert_eq(&text);
    }
}
