//! Test support: fresh, isolated databases on the PostgreSQL server the test command started.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The variable the test command sets to the URL of its PostgreSQL server.
pub const DATABASE_URL_VAR: &str = "HYDRA_TEST_DATABASE_URL";

/// The URL of the test PostgreSQL server, or a panic that says how to get one.
pub fn postgres_server_url() -> String {
    std::env::var(DATABASE_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{DATABASE_URL_VAR} is not set: run the tests with ./scripts/test (it starts PostgreSQL on \
             loopback), or point {DATABASE_URL_VAR} at a PostgreSQL server you may create databases on"
        )
    })
}

/// Creates a new empty database named after `label` plus a random suffix on the test server and
/// returns its URL. Databases are left for the test command to drop with the server's data dir.
pub async fn fresh_postgres_database(label: &str) -> String {
    let server_url = postgres_server_url();
    let suffix: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default()
        ^ u64::from(std::process::id()) << 32;
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!("hydra_{label}_{suffix:x}");
    let mut connection = PgConnection::connect(&server_url)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {DATABASE_URL_VAR}: {error}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
    let (base, _) = server_url
        .rsplit_once('/')
        .expect("database URL has a path");
    format!("{base}/{name}")
}

/// Makes the test database at `database_url` refuse (`accepting = false`) or accept new
/// connections, and, when refusing, ends the sessions it has: a real outage of that database as
/// its clients see it, while the test server's other databases stay up.
pub async fn set_database_accepting(database_url: &str, accepting: bool) {
    let (_, name) = database_url
        .rsplit_once('/')
        .expect("database URL has a path");
    assert!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "not a test database name: {name}"
    );
    let mut connection = PgConnection::connect(&postgres_server_url())
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {DATABASE_URL_VAR}: {error}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS {accepting}"
    )))
    .execute(&mut connection)
    .await
    .unwrap_or_else(|error| panic!("cannot change ALLOW_CONNECTIONS of {name}: {error}"));
    if !accepting {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(name)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("cannot end the sessions of {name}: {error}"));
    }
}

/// Ends (`pg_terminate_backend`) every session of the test database at `database_url` whose last
/// statement was a `LISTEN`: the change-feed listeners of the replicas on it, as a network cut
/// of those connections would. Answers how many were ended.
pub async fn terminate_change_listeners(database_url: &str) -> usize {
    let (_, name) = database_url
        .rsplit_once('/')
        .expect("database URL has a path");
    let mut connection = PgConnection::connect(&postgres_server_url())
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {DATABASE_URL_VAR}: {error}"));
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND query ILIKE 'listen%' AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut connection)
    .await
    .unwrap_or_else(|error| panic!("cannot end the listeners of {name}: {error}"));
    ended.into_iter().filter(|ended| *ended).count()
}
