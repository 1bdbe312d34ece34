-- Write ids (sqlite): the ids senders gave their writes (`Idempotency-Key`, e.g. an agent's
-- journal replaying what it wrote while no master answered). An id is inserted in the same
-- transaction as its write, so a replay of an applied write is recognised and not applied twice;
-- `status` is what the first application answered. Pruned by age (`applied_at`, unix ms).
CREATE TABLE write_ids (
    id         TEXT PRIMARY KEY NOT NULL,
    status     BIGINT NOT NULL,
    applied_at BIGINT NOT NULL
);
CREATE INDEX write_ids_applied_at ON write_ids (applied_at);
