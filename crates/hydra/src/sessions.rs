//! `hydra sessions`: list (filtered, paged), show, create and end relay sessions, through the
//! SDK.

use std::process::ExitCode;

use hydra_api::{CreateSessionRequest, SessionList, SessionQuery, SessionState, SessionView};

use crate::client_args::ClientArgs;
use crate::output::{Table, key_values, or_dash, print, print_json};

/// Subcommands of `hydra sessions`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List sessions, newest first, one page at a time (`--cursor` for the next page).
    List(ListArgs),
    /// Show one session.
    Show(IdArgs),
    /// Create a session on the least-loaded healthy worker; prints its stream URL.
    Create(CreateArgs),
    /// End a session: its worker ends the process; the record turns `stopped`.
    End(IdArgs),
}

/// A session state on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StatusArg {
    /// Placed; the worker is starting it.
    Starting,
    /// Running.
    Running,
    /// Ended by a user or an operator.
    Stopped,
    /// Failed.
    Error,
}

impl From<StatusArg> for SessionState {
    fn from(status: StatusArg) -> SessionState {
        match status {
            StatusArg::Starting => SessionState::Starting,
            StatusArg::Running => SessionState::Running,
            StatusArg::Stopped => SessionState::Stopped,
            StatusArg::Error => SessionState::Error,
        }
    }
}

/// Options of `hydra sessions list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only sessions in this state.
    #[arg(long, value_name = "STATE")]
    status: Option<StatusArg>,
    /// Only sessions on this worker.
    #[arg(long, value_name = "ID")]
    worker: Option<String>,
    /// Only sessions asked for this head.
    #[arg(long, value_name = "ID")]
    head: Option<String>,
    /// Sessions per page (1 to 1000) [default: 100].
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// The `next_cursor` a previous page printed: show the page after it.
    #[arg(long, value_name = "CURSOR")]
    cursor: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Options of `hydra sessions create`: the body by address, or the head to pick one for.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The body's address (its streaming server on 47990).
    #[arg(long, value_name = "IP", required_unless_present = "head_id")]
    body_ip: Option<String>,
    /// The head the session is for: the selection policy picks the body.
    #[arg(long, value_name = "ID")]
    head_id: Option<String>,
    /// Sunshine user for the pairing (else the worker's `sunshine.username`); the password
    /// comes from HYDRA_SUNSHINE_PASS only (argv is readable by every local user).
    #[arg(long, value_name = "USER")]
    sunshine_user: Option<String>,
    /// The experience to launch.
    #[arg(long, value_name = "NAME")]
    experience: Option<String>,
    /// The executable the body launches.
    #[arg(long, value_name = "PATH")]
    exe_path: Option<String>,
    /// Only workers of this district.
    #[arg(long, value_name = "DISTRICT")]
    district: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// A command that names one session.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The session's id.
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List(args) => list(args).await,
        Command::Show(args) => show(args).await,
        Command::Create(args) => create(args).await,
        Command::End(args) => end(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let query = SessionQuery {
        status: args.status.map(SessionState::from),
        worker_id: args.worker.clone(),
        head_id: args.head.clone(),
        limit: args.limit,
        cursor: args.cursor.clone(),
    };
    let page = client
        .sessions_page(&query)
        .await
        .map_err(|error| args.client.explain(error, "cannot list sessions"))?;
    crate::output::listing(args.client.json, &page, sessions_table)
}

async fn show(args: IdArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let session = client.session(&args.id).await.map_err(|error| {
        args.client
            .explain(error, format!("cannot show session {:?}", args.id))
    })?;
    print_session(&args.client, &session)
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let request = CreateSessionRequest {
        body_ip: args.body_ip.clone(),
        head_id: args.head_id.clone(),
        sunshine_user: args.sunshine_user.clone(),
        sunshine_pass: std::env::var("HYDRA_SUNSHINE_PASS").ok(),
        experience: args.experience.clone(),
        exe_path: args.exe_path.clone(),
        district: args.district.clone(),
    };
    let session = client
        .create_session(&request)
        .await
        .map_err(|error| args.client.explain(error, "cannot create a session"))?;
    print_session(&args.client, &session)
}

async fn end(args: IdArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let session = client.end_session(&args.id).await.map_err(|error| {
        args.client
            .explain(error, format!("cannot end session {:?}", args.id))
    })?;
    print_session(&args.client, &session)
}

fn print_session(client: &ClientArgs, session: &SessionView) -> anyhow::Result<ExitCode> {
    if client.json {
        print_json(session)?;
    } else {
        print(&key_values(&[
            ("id", session.session_id.clone()),
            ("status", session.status.as_str().to_owned()),
            ("worker", session.worker_id.clone()),
            ("body ip", session.body_ip.clone()),
            ("body", or_dash(session.body_id.as_ref())),
            ("head", or_dash(session.head_id.as_ref())),
            ("experience", or_dash(session.experience.as_ref())),
            ("stream url", or_dash(session.stream_url.as_ref())),
            ("error", or_dash(session.error.as_ref())),
            ("created", session.created_at.clone()),
            ("updated", session.updated_at.clone()),
        ]));
    }
    Ok(ExitCode::SUCCESS)
}

/// The page as a table, then the cursor of the next page when there is one.
fn sessions_table(page: &SessionList) -> String {
    let mut table = Table::new(&["ID", "STATUS", "WORKER", "BODY IP", "HEAD", "CREATED"]);
    for session in &page.sessions {
        table.row(vec![
            session.session_id.clone(),
            session.status.as_str().to_owned(),
            session.worker_id.clone(),
            session.body_ip.clone(),
            or_dash(session.head_id.as_ref()),
            session.created_at.clone(),
        ]);
    }
    let mut out = table.render();
    if let Some(cursor) = &page.next_cursor {
        out.push_str(&format!("more: --cursor {cursor}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn session(id: &str, status: SessionState, head: Option<&str>) -> SessionView {
        SessionView {
            session_id: id.into(),
            worker_id: "w-1".into(),
            body_ip: "10.0.0.1".into(),
            body_id: None,
            head_id: head.map(str::to_owned),
            experience: None,
            port: Some(8080),
            stream_url: None,
            status,
            error: None,
            created_at: "2026-12-01T14:00:00Z".into(),
            updated_at: "2026-12-01T14:00:00Z".into(),
        }
    }

    #[test]
    fn the_table_says_where_the_next_page_starts() {
        let page = SessionList {
            sessions: vec![
                session("s-02", SessionState::Running, Some("h-1")),
                session("s-01", SessionState::Stopped, None),
            ],
            next_cursor: Some("1764597600000.s-01".into()),
        };
        expect![[r#"
            ID    STATUS   WORKER  BODY IP   HEAD  CREATED
            s-02  running  w-1     10.0.0.1  h-1   2026-12-01T14:00:00Z
            s-01  stopped  w-1     10.0.0.1  -     2026-12-01T14:00:00Z
            more: --cursor 1764597600000.s-01
        "#]]
        .assert_eq(&sessions_table(&page));
    }
}
