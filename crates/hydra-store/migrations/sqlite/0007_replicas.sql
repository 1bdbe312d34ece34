-- Control-plane replicas (SQLite runs one replica; the tables exist so both engines share a schema).
-- Times are unix ms taken from the database's own clock (never a replica's), so replicas with
-- skewed clocks agree on who holds the lease. `term` grows by one on every takeover; writes check
-- it in their own transaction (the fence), so a deposed master that wakes up late writes nothing.
CREATE TABLE master_lease (
    id         INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    holder     TEXT NOT NULL,
    term       BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- One row per replica that ever ran on this database: where it is reached and when it last
-- said it was alive (healthy while younger than twice its interval).
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY NOT NULL,
    base_url     TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
