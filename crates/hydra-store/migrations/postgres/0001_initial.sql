-- Registry, latency samples and relay sessions (PostgreSQL).
CREATE TABLE nodes (
    id              TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    roles           TEXT NOT NULL,
    district        TEXT NOT NULL,
    venue           TEXT NOT NULL,
    owner           TEXT NOT NULL,
    allowed_orgs    TEXT NOT NULL,
    lan_ip          TEXT,
    wg_ip           TEXT,
    vram_mb         BIGINT,
    cost_tier       TEXT NOT NULL,
    drained         BOOLEAN NOT NULL DEFAULT FALSE,
    idle            BOOLEAN NOT NULL DEFAULT FALSE,
    active_sessions BIGINT NOT NULL DEFAULT 0,
    last_heartbeat  BIGINT,
    enrolled_at     BIGINT NOT NULL,
    token_hash      TEXT NOT NULL
);

CREATE TABLE latency (
    head_id     TEXT NOT NULL,
    body_id     TEXT NOT NULL,
    transport   TEXT NOT NULL,
    rtt_ms      BIGINT NOT NULL,
    measured_at BIGINT NOT NULL,
    PRIMARY KEY (head_id, body_id)
);
CREATE INDEX latency_body ON latency (body_id);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    worker_id   TEXT NOT NULL,
    body_ip     TEXT NOT NULL,
    body_id     TEXT,
    head_id     TEXT,
    experience  TEXT,
    port        BIGINT,
    stream_url  TEXT,
    status      TEXT NOT NULL,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX sessions_worker ON sessions (worker_id);
