-- The change feed: every write transaction takes the next revision from the one `revisions` row
-- (`UPDATE ... SET value = value + 1 RETURNING value`, whose row lock is held until commit, so
-- revisions commit in order with no gap a follower could skip) and lists what it changed in
-- `changes`. Replicas follow the feed by revision to keep their in-memory views current.
-- `pruned_through`: change rows up to this revision were deleted; a follower further behind
-- reloads everything instead. `feed_id`: random, made once per database, so a revision from
-- another database (an independent server) is never mistaken for one of this feed.
CREATE TABLE revisions (
    id             INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    value          BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL,
    feed_id        TEXT NOT NULL
);
INSERT INTO revisions (id, value, pruned_through, feed_id) VALUES (1, 0, 0, md5(random()::text || clock_timestamp()::text));

-- `kind`: node, latency, worker_report, session, node_config; `key`: the changed row's id
-- (a latency row: head id, a tab, body id).
CREATE TABLE changes (
    revision BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    PRIMARY KEY (revision, kind, key)
);
