-- Relay worker reports (PostgreSQL): what each worker's agent last reported, so that sessions can be
-- placed right after a server restart. `agent_key_sealed` is the agent's per-start key as the
-- server sealed it (AES-256-GCM-SIV under a key derived from the admin token), never the key.
CREATE TABLE worker_reports (
    worker_id        TEXT PRIMARY KEY NOT NULL,
    agent_url        TEXT NOT NULL,
    agent_key_sealed TEXT NOT NULL,
    max_sessions     BIGINT NOT NULL,
    reported_at      BIGINT NOT NULL
);
