-- One-time enrolment tokens (postgres): only the SHA-256 digest is kept. A token is consumed
-- (used_at, used_by set) in the same transaction that inserts the node it enrolled.
CREATE TABLE enrolment_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);
