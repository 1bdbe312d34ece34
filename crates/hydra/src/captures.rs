//! `hydra captures`: start a capture of one node's or every node's monitor feed, list, show
//! (the "Fan-out segments (N nodes)" panel), tail live, download and stop, through the SDK.

use std::io::Write;
use std::process::ExitCode;

use hydra_api::captures::{CaptureList, CaptureView, CreateCaptureRequest, MonitorFilters};

use crate::client_args::{ClientArgs, parse_duration};
use crate::output::{Table, key_values, or_dash, print, print_json};

/// Subcommands of `hydra captures`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start a capture of one node (`--node`) or of every online node (`--fan-out`).
    Start(StartArgs),
    /// List captures, newest first.
    List(ListArgs),
    /// Show a capture and its segments table.
    Show(IdArgs),
    /// Follow a running capture's lines live, every node interleaved (or one with `--node`).
    Tail(NodeArgs),
    /// Write a capture's stored lines (NDJSON) to standard output.
    Download(NodeArgs),
    /// Stop every writer of a running capture.
    Stop(IdArgs),
}

/// Options of `hydra captures start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Capture every online node.
    #[arg(long, conflicts_with = "node")]
    fan_out: bool,
    /// Capture this node.
    #[arg(long, value_name = "ID")]
    node: Option<String>,
    /// How long to capture, e.g. 10m, 30s [default: 10m].
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Only lines containing this text.
    #[arg(long, value_name = "TEXT")]
    contains: Option<String>,
    /// Least severe level kept: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL")]
    level: Option<String>,
    /// Most lines each node's segment keeps.
    #[arg(long, value_name = "N")]
    max_lines: Option<u64>,
    /// Most bytes each node's segment keeps.
    #[arg(long, value_name = "N")]
    max_bytes: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `hydra captures list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// A command that names one capture.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The capture's id.
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// A command that names one capture and optionally one node.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The capture's id.
    #[arg(value_name = "ID")]
    id: String,
    /// Only this node's lines.
    #[arg(long, value_name = "ID")]
    node: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Start(args) => start(args).await,
        Command::List(args) => list(args).await,
        Command::Show(args) => show(args).await,
        Command::Tail(args) => stream(args, true).await,
        Command::Download(args) => stream(args, false).await,
        Command::Stop(args) => stop(args).await,
    }
}

async fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let request = CreateCaptureRequest {
        node_id: args.node.clone(),
        fan_out: args.fan_out,
        filters: MonitorFilters {
            level: args.level.clone(),
            session: None,
            contains: args.contains.clone(),
        },
        duration: args.duration.map(|duration| duration.as_secs().max(1)),
        max_lines: args.max_lines,
        max_bytes: args.max_bytes,
    };
    let capture = client
        .create_capture(&request)
        .await
        .map_err(|error| args.client.explain(error, "cannot start the capture"))?;
    print_capture(&args.client, &capture)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let list = client
        .list_captures()
        .await
        .map_err(|error| args.client.explain(error, "cannot list captures"))?;
    crate::output::listing(args.client.json, &list, captures_table)
}

/// The captures as a table, newest first.
fn captures_table(list: &CaptureList) -> String {
    let mut table = Table::new(&["ID", "STATUS", "REASON", "NODES", "LINES", "CREATED"]);
    for capture in &list.captures {
        table.row(vec![
            capture.capture_id.clone(),
            capture.status.as_str().to_owned(),
            or_dash(capture.termination_reason.map(|reason| reason.as_str())),
            capture.node_segments.len().to_string(),
            capture.line_count.to_string(),
            capture.created_at.clone(),
        ]);
    }
    table.render()
}

async fn show(args: IdArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let capture = client.capture(&args.id).await.map_err(|error| {
        args.client
            .explain(error, format!("cannot show capture {:?}", args.id))
    })?;
    print_capture(&args.client, &capture)
}

async fn stop(args: IdArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let capture = client.stop_capture(&args.id).await.map_err(|error| {
        args.client
            .explain(error, format!("cannot stop capture {:?}", args.id))
    })?;
    print_capture(&args.client, &capture)
}

/// `tail` (live) or `download` (stored): copies the NDJSON stream to standard output.
async fn stream(args: NodeArgs, live: bool) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let opened = if live {
        client.tail_capture(&args.id, args.node.as_deref()).await
    } else {
        client
            .capture_lines(&args.id, args.node.as_deref(), None)
            .await
    };
    let mut lines = opened.map_err(|error| {
        args.client
            .explain(error, format!("cannot read capture {:?}", args.id))
    })?;
    let mut stdout = std::io::stdout().lock();
    loop {
        let chunk = lines.next_chunk().await.map_err(|error| {
            args.client
                .explain(error, format!("reading capture {:?} stopped", args.id))
        })?;
        let Some(chunk) = chunk else { break };
        if chunk.iter().all(|byte| *byte == b'\n') {
            continue; // a tail's keep-alive
        }
        stdout.write_all(&chunk)?;
        if live {
            stdout.flush()?;
        }
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The capture's fields, then the segments table ("Fan-out segments (N nodes)").
pub fn capture_text(capture: &CaptureView) -> String {
    let mut text = key_values(&[
        ("id", capture.capture_id.clone()),
        ("status", capture.status.as_str().to_owned()),
        (
            "reason",
            or_dash(capture.termination_reason.map(|reason| reason.as_str())),
        ),
        (
            "fan out",
            if capture.fan_out { "yes" } else { "no" }.to_owned(),
        ),
        ("lines", capture.line_count.to_string()),
        ("bytes", capture.byte_count.to_string()),
        ("created", capture.created_at.clone()),
        ("ended", or_dash(capture.ended_at.as_ref())),
    ]);
    text.push_str(&format!(
        "\nFan-out segments ({} nodes)\n",
        capture.node_segments.len()
    ));
    let mut table = Table::new(&[
        "NODE", "ADDRESS", "STATUS", "LINES", "BYTES", "REASON", "ENDED",
    ]);
    for segment in &capture.node_segments {
        table.row(vec![
            segment.node_id.clone(),
            if segment.address.is_empty() {
                "-".to_owned()
            } else {
                segment.address.clone()
            },
            segment.status.as_str().to_owned(),
            segment.line_count.to_string(),
            segment.byte_count.to_string(),
            or_dash(segment.termination_reason.map(|reason| reason.as_str())),
            or_dash(segment.ended_at.as_ref()),
        ]);
    }
    text.push_str(&table.render());
    text
}

fn print_capture(client: &ClientArgs, capture: &CaptureView) -> anyhow::Result<ExitCode> {
    if client.json {
        print_json(capture)?;
    } else {
        print(&capture_text(capture));
    }
    Ok(ExitCode::SUCCESS)
}
