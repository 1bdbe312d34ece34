-- Live relay sessions (sqlite): reconciliation of a worker's report and the sweep of workers that
-- are gone read only the sessions still holding a slot, through this partial index, so the
-- history of ended sessions does not slow them down.
CREATE INDEX sessions_live ON sessions (worker_id) WHERE status IN ('starting', 'running');
