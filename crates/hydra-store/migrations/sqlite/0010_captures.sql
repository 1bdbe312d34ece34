-- Fan-out captures (sqlite): a capture records the monitor feed of one or more nodes (issue 12).
-- Each node's part is a segment that only that node's writer updates; only the orchestrator
-- updates the capture row. Lines are kept in chunks keyed by (capture, node, sequence): the node
-- is in the key, so nodes never collide. Idempotent (IF NOT EXISTS), so a re-run changes nothing.
CREATE TABLE IF NOT EXISTS captures (
    id                 TEXT PRIMARY KEY NOT NULL,
    status             TEXT NOT NULL,
    termination_reason TEXT,
    fan_out            BOOLEAN NOT NULL,
    filters            TEXT NOT NULL,
    duration_ms        BIGINT,
    max_lines          BIGINT,
    max_bytes          BIGINT,
    created_at         BIGINT NOT NULL,
    ended_at           BIGINT
);
CREATE INDEX IF NOT EXISTS captures_created ON captures (created_at, id);

-- One row per node of a capture; counts are updated with each chunk, in its transaction.
-- `last_sequence` is the node's sequence number of the last stored line (where a writer
-- resumes); `lines_missing` counts lines the node dropped or that could not be recovered.
CREATE TABLE IF NOT EXISTS capture_segments (
    capture_id         TEXT NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
    node_id            TEXT NOT NULL,
    address            TEXT NOT NULL,
    status             TEXT NOT NULL,
    termination_reason TEXT,
    byte_count         BIGINT NOT NULL,
    line_count         BIGINT NOT NULL,
    last_sequence      BIGINT,
    lines_missing      BIGINT NOT NULL,
    ended_at           BIGINT,
    PRIMARY KEY (capture_id, node_id)
);

-- Lines (NDJSON, as the node sent them) in chunks of up to ~64 KiB or 1 s.
CREATE TABLE IF NOT EXISTS capture_chunks (
    capture_id     TEXT NOT NULL,
    node_id        TEXT NOT NULL,
    sequence       BIGINT NOT NULL,
    first_sequence BIGINT NOT NULL,
    last_sequence  BIGINT NOT NULL,
    line_count     BIGINT NOT NULL,
    data           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (capture_id, node_id, sequence),
    FOREIGN KEY (capture_id, node_id) REFERENCES capture_segments (capture_id, node_id) ON DELETE CASCADE
);
