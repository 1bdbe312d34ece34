//! The store's one error type, which the server maps to HTTP.

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with this key exists already.
    #[error("{what} already exists")]
    Conflict {
        /// What collided, e.g. `node "node-1a2b3c4d"`.
        what: String,
    },
    /// The engine failed or is unreachable.
    #[error("storage engine error: {0}")]
    Engine(#[from] sqlx::Error),
    /// A migration failed at start.
    #[error("storage migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value cannot be read back (a bug or a hand-edited database).
    #[error("corrupt stored value in {column}: {detail}")]
    Corrupt {
        /// Table and column.
        column: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// This replica may not write: it does not hold the master lease, or (`term` given) the
    /// lease row no longer holds its id and term (a deposed master, fenced).
    #[error("this replica is not the master{}", term.map(|term| format!(" (fenced: its term {term} is over)")).unwrap_or_default())]
    NotMaster {
        /// The term the write was fenced with, when it had one.
        term: Option<i64>,
    },
    /// The path of the SQLite file cannot be used.
    #[error("cannot open database file {path}: {detail}")]
    Path {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
}

impl StoreError {
    /// Whether the engine refused a value or statement (a unique key taken, a value it cannot
    /// store such as a NUL in PostgreSQL text, a value out of range) rather than failing to
    /// answer: a batch refused so may succeed without its bad write, and is worth retrying write
    /// by write.
    pub fn is_refused_write(&self) -> bool {
        match self {
            StoreError::Conflict { .. } | StoreError::Corrupt { .. } => true,
            StoreError::Engine(sqlx::Error::Database(_)) => true,
            StoreError::Engine(sqlx::Error::Encode(_)) => true,
            StoreError::Engine(_)
            | StoreError::Migrate(_)
            | StoreError::Path { .. }
            | StoreError::NotMaster { .. } => false,
        }
    }
}
