//! `hydra nodes`: enrol, list, show, move, drain, undrain and remove nodes, through the SDK.

use std::net::IpAddr;
use std::process::ExitCode;

use hydra_api::{
    CostTierWire, EnrolRequest, EnrolmentTokenRequest, MoveRequest, NodeStatusWire, NodeView,
    RoleWire,
};

use crate::client_args::ClientArgs;
use crate::output::{Table, key_values, or_dash, print, print_json, yes_no};

/// Subcommands of `hydra nodes`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List every enrolled node with its status (online while it heartbeats).
    List(ListArgs),
    /// Show everything the registry knows about one node.
    Show(IdArgs),
    /// Enrol a node; prints its token, which the server never shows again.
    Enrol(EnrolArgs),
    /// Move a node to another district and venue (park a body in e.g. `bxl1-test` to take it
    /// out of selection; move it back to restore it).
    Move(MoveArgs),
    /// Drain a node: it stays enrolled but takes no new work; its running sessions go on
    /// (`--wait` follows them until the last ends).
    Drain(DrainArgs),
    /// Undrain a node: it takes new work again.
    Undrain(IdArgs),
    /// Remove a node from the registry (its token stops working).
    Remove(IdArgs),
    /// Show or change a node's config bundle (what the control plane overrides in its YAML).
    #[command(subcommand)]
    Config(crate::node_config::Command),
    /// One-time enrolment tokens: give a node's agent one instead of the admin token.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Subcommands of `hydra nodes token`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token that enrols one node, once, before it expires (admin); printed once.
    Create(TokenCreateArgs),
}

/// Options of `hydra nodes token create`.
#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// How long the token stays usable, e.g. `1h`, `30m`, `7d` (at most 30 days).
    #[arg(long, value_name = "DURATION", default_value = "1h",
        value_parser = crate::client_args::parse_duration)]
    expires: std::time::Duration,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `hydra nodes list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// A command that names one node.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The node's id.
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `hydra nodes drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node's id.
    #[arg(value_name = "ID")]
    id: String,
    /// Follow the worker's running sessions until the last one ends, printing an estimate from
    /// their ages.
    #[arg(long)]
    wait: bool,
    /// With --wait: after this long (e.g. 10m), tell each session's page its stream ends in
    /// --notice, then end the sessions left.
    #[arg(long, value_name = "DURATION", requires = "wait",
        value_parser = crate::client_args::parse_duration)]
    deadline: Option<std::time::Duration>,
    /// With --deadline: how long the pages are told before their sessions end.
    #[arg(long, value_name = "DURATION", default_value = "30s",
        value_parser = crate::client_args::parse_duration)]
    notice: std::time::Duration,
    #[command(flatten)]
    client: ClientArgs,
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// GPU host running a streaming server.
    Body,
    /// Relay node running browser-stream sessions.
    Worker,
    /// Client screen streaming from one body.
    Head,
}

impl From<RoleArg> for RoleWire {
    fn from(role: RoleArg) -> RoleWire {
        match role {
            RoleArg::Body => RoleWire::Body,
            RoleArg::Worker => RoleWire::Worker,
            RoleArg::Head => RoleWire::Head,
        }
    }
}

/// A cost tier on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CostTierArg {
    /// Own hardware.
    Owned,
    /// Shared under an agreement.
    Shared,
    /// Rented.
    Leased,
    /// Bought per use.
    Marketplace,
}

impl From<CostTierArg> for CostTierWire {
    fn from(tier: CostTierArg) -> CostTierWire {
        match tier {
            CostTierArg::Owned => CostTierWire::Owned,
            CostTierArg::Shared => CostTierWire::Shared,
            CostTierArg::Leased => CostTierWire::Leased,
            CostTierArg::Marketplace => CostTierWire::Marketplace,
        }
    }
}

/// Options of `hydra nodes enrol`: every field of the enrolment.
#[derive(Debug, clap::Args)]
pub struct EnrolArgs {
    /// Node id (letters, digits, `.`, `_`, `-`); generated as `node-` + 8 hex when absent.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Human name; defaults to the id.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A role of the node; repeat (or separate with commas) for several.
    #[arg(
        long = "role",
        value_name = "ROLE",
        value_delimiter = ',',
        required = true
    )]
    roles: Vec<RoleArg>,
    /// Region, e.g. `bxl1`.
    #[arg(long, value_name = "DISTRICT")]
    district: String,
    /// Site inside the district, e.g. `rupelmonde`.
    #[arg(long, value_name = "VENUE")]
    venue: String,
    /// Owning organisation.
    #[arg(long, value_name = "ORG")]
    owner: String,
    /// Another organisation allowed to use the node; repeat (or separate with commas).
    #[arg(long = "allowed-org", value_name = "ORG", value_delimiter = ',')]
    allowed_orgs: Vec<String>,
    /// Address on the venue LAN.
    #[arg(long, value_name = "IP")]
    lan_ip: Option<IpAddr>,
    /// Address on the WireGuard overlay.
    #[arg(long, value_name = "IP")]
    wg_ip: Option<IpAddr>,
    /// GPU memory in MB.
    #[arg(long, value_name = "MB")]
    vram_mb: Option<u64>,
    /// Who pays for the node.
    #[arg(long, value_name = "TIER", default_value = "owned")]
    cost_tier: CostTierArg,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `hydra nodes move`.
#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// The node's id.
    #[arg(value_name = "ID")]
    id: String,
    /// New district.
    #[arg(long, value_name = "DISTRICT")]
    district: String,
    /// New venue.
    #[arg(long, value_name = "VENUE")]
    venue: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List(args) => list(args).await,
        Command::Show(args) => show(args).await,
        Command::Enrol(args) => enrol(args).await,
        Command::Move(args) => move_node(args).await,
        Command::Drain(args) => drain(args).await,
        Command::Undrain(args) => set_drained(args, false).await,
        Command::Remove(args) => remove(args).await,
        Command::Token(TokenCommand::Create(args)) => create_token(args).await,
        Command::Config(command) => crate::node_config::run(command).await,
    }
}

async fn create_token(args: TokenCreateArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    // Whole seconds, rounded up, so `--expires 500ms` still makes a usable token.
    let expires_in_s = args.expires.as_secs() + u64::from(args.expires.subsec_nanos() > 0);
    let created = client
        .create_enrolment_token(&EnrolmentTokenRequest { expires_in_s })
        .await
        .map_err(|error| {
            args.client
                .explain(error, "cannot create an enrolment token")
        })?;
    if args.client.json {
        print_json(&created)?;
    } else {
        print(&format!(
            "enrolment token: {}
expires: {}
it enrols one node, once; it will not be shown again \
             (put it in the agent's controller.enrolment_token)\n",
            created.token, created.expires_at
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let list = client
        .list_nodes()
        .await
        .map_err(|error| args.client.explain(error, "cannot list nodes"))?;
    crate::output::listing(args.client.json, &list, |list| nodes_table(&list.nodes))
}

async fn show(args: IdArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let node = client.node(&args.id).await.map_err(|error| {
        args.client
            .explain(error, format!("cannot show node {:?}", args.id))
    })?;
    if args.client.json {
        print_json(&node)?;
    } else {
        print(&node_details(&node));
    }
    Ok(ExitCode::SUCCESS)
}

async fn enrol(args: EnrolArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let request = EnrolRequest {
        id: args.id.clone(),
        name: args.name.clone(),
        roles: args.roles.iter().copied().map(RoleWire::from).collect(),
        district: args.district.clone(),
        venue: args.venue.clone(),
        owner: args.owner.clone(),
        allowed_orgs: args.allowed_orgs.clone(),
        lan_ip: args.lan_ip,
        wg_ip: args.wg_ip,
        vram_mb: args.vram_mb,
        cost_tier: args.cost_tier.into(),
    };
    let enrolled = client
        .enrol(&request)
        .await
        .map_err(|error| args.client.explain(error, "cannot enrol the node"))?;
    if args.client.json {
        print_json(&enrolled)?;
    } else {
        print(&format!("enrolled node {}\n", enrolled.node.id));
        print(&node_details(&enrolled.node));
        print(&format!(
            "token: {}\nthis token will not be shown again: store it now (the node's agent uses it)\n",
            enrolled.token
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn move_node(args: MoveArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let request = MoveRequest {
        district: args.district.clone(),
        venue: args.venue.clone(),
    };
    let node = client
        .move_node(&args.id, &request)
        .await
        .map_err(|error| {
            args.client
                .explain(error, format!("cannot move node {:?}", args.id))
        })?;
    if args.client.json {
        print_json(&node)?;
    } else {
        print(&format!(
            "moved node {} to district {}, venue {}\n",
            node.id, node.district, node.venue
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_drained(args: IdArgs, drained: bool) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let verb = if drained { "drain" } else { "undrain" };
    let node = client
        .set_drained(&args.id, drained)
        .await
        .map_err(|error| {
            args.client
                .explain(error, format!("cannot {verb} node {:?}", args.id))
        })?;
    if args.client.json {
        print_json(&node)?;
    } else if node.drained {
        print(&format!(
            "node {} is drained: it takes no new work\n",
            node.id
        ));
    } else {
        print(&format!(
            "node {} is not drained: it takes new work\n",
            node.id
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let id_args = IdArgs {
        id: args.id.clone(),
        client: args.client.clone(),
    };
    let outcome = set_drained(id_args, true).await?;
    if args.wait {
        let client = args.client.client()?;
        let follow = crate::drain::Follow {
            deadline: args.deadline,
            notice: args.notice,
            json: args.client.json,
        };
        crate::drain::follow(&client, &args.id, follow).await?;
    }
    Ok(outcome)
}

async fn remove(args: IdArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    client.remove_node(&args.id).await.map_err(|error| {
        args.client
            .explain(error, format!("cannot remove node {:?}", args.id))
    })?;
    if args.client.json {
        print_json(&serde_json::json!({ "id": args.id, "removed": true }))?;
    } else {
        print(&format!("removed node {}\n", args.id));
    }
    Ok(ExitCode::SUCCESS)
}

fn roles_text(node: &NodeView) -> String {
    let words: Vec<&str> = node.roles.iter().map(|role| role_word(*role)).collect();
    words.join(",")
}

fn role_word(role: RoleWire) -> &'static str {
    match role {
        RoleWire::Body => "body",
        RoleWire::Worker => "worker",
        RoleWire::Head => "head",
    }
}

/// The wire word of a cost tier.
pub fn tier_word(tier: CostTierWire) -> &'static str {
    match tier {
        CostTierWire::Owned => "owned",
        CostTierWire::Shared => "shared",
        CostTierWire::Leased => "leased",
        CostTierWire::Marketplace => "marketplace",
    }
}

/// One line per node, then a count.
fn nodes_table(nodes: &[NodeView]) -> String {
    let mut table = Table::new(&[
        "ID", "NAME", "ROLES", "DISTRICT", "VENUE", "OWNER", "STATUS", "IDLE", "DRAINED", "LAN_IP",
        "WG_IP", "VRAM_MB", "TIER",
    ]);
    for node in nodes {
        table.row(vec![
            node.id.clone(),
            node.name.clone(),
            roles_text(node),
            node.district.clone(),
            node.venue.clone(),
            node.owner.clone(),
            node.status.to_string(),
            yes_no(node.idle),
            yes_no(node.drained),
            or_dash(node.lan_ip),
            or_dash(node.wg_ip),
            or_dash(node.vram_mb),
            tier_word(node.cost_tier).to_owned(),
        ]);
    }
    let online = nodes
        .iter()
        .filter(|node| node.status == NodeStatusWire::Online)
        .count();
    format!("{}{} nodes, {online} online\n", table.render(), nodes.len())
}

/// Every field of one node.
fn node_details(node: &NodeView) -> String {
    let allowed = if node.allowed_orgs.is_empty() {
        "-".to_owned()
    } else {
        node.allowed_orgs.join(",")
    };
    key_values(&[
        ("id", node.id.clone()),
        ("name", node.name.clone()),
        ("roles", roles_text(node)),
        ("district", node.district.clone()),
        ("venue", node.venue.clone()),
        ("owner", node.owner.clone()),
        ("allowed_orgs", allowed),
        ("lan_ip", or_dash(node.lan_ip)),
        ("wg_ip", or_dash(node.wg_ip)),
        ("vram_mb", or_dash(node.vram_mb)),
        ("cost_tier", tier_word(node.cost_tier).to_owned()),
        ("status", node.status.to_string()),
        ("idle", yes_no(node.idle)),
        ("drained", yes_no(node.drained)),
        ("active_sessions", node.active_sessions.to_string()),
        ("last_heartbeat", or_dash(node.last_heartbeat.as_deref())),
        ("enrolled_at", node.enrolled_at.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(id: &str, venue: &str, status: NodeStatusWire) -> NodeView {
        NodeView {
            id: id.into(),
            name: id.into(),
            roles: vec![RoleWire::Body, RoleWire::Worker],
            district: "bxl1".into(),
            venue: venue.into(),
            owner: "acme".into(),
            allowed_orgs: vec![],
            lan_ip: Some("10.0.1.5".parse().unwrap()),
            wg_ip: None,
            vram_mb: Some(24_576),
            cost_tier: CostTierWire::Owned,
            drained: false,
            idle: true,
            active_sessions: 0,
            status,
            last_heartbeat: Some("2026-01-01T10:00:00.000Z".into()),
            enrolled_at: "2026-01-01T09:00:00.000Z".into(),
        }
    }

    #[test]
    fn lists_nodes_as_an_aligned_table() {
        let nodes = [
            body("body-1", "rupelmonde", NodeStatusWire::Online),
            body("body-22", "cloud-seven", NodeStatusWire::Offline),
        ];
        expect_test::expect![[r#"
            ID       NAME     ROLES        DISTRICT  VENUE        OWNER  STATUS   IDLE  DRAINED  LAN_IP    WG_IP  VRAM_MB  TIER
            body-1   body-1   body,worker  bxl1      rupelmonde   acme   online   yes   no       10.0.1.5  -      24576    owned
            body-22  body-22  body,worker  bxl1      cloud-seven  acme   offline  yes   no       10.0.1.5  -      24576    owned
            2 nodes, 1 online
        "#]]
        .assert_eq(&nodes_table(&nodes));
    }

    #[test]
    fn shows_every_field_of_a_node() {
        expect_test::expect![[r#"
            id:               body-1
            name:             body-1
            roles:            body,worker
            district:         bxl1
            venue:            rupelmonde
            owner:            acme
            allowed_orgs:     -
            lan_ip:           10.0.1.5
            wg_ip:            -
            vram_mb:          24576
            cost_tier:        owned
            status:           online
            idle:             yes
            drained:          no
            active_sessions:  0
            last_heartbeat:   2026-01-01T10:00:00.000Z
            enrolled_at:      2026-01-01T09:00:00.000Z
        "#]]
        .assert_eq(&node_details(&body(
            "body-1",
            "rupelmonde",
            NodeStatusWire::Online,
        )));
    }
}
