-- Session history (SQLite): the list is paged newest first on (created_at, id), and retention
-- deletes ended sessions by age, so neither scans the whole table.
CREATE INDEX sessions_created ON sessions (created_at, id);
CREATE INDEX sessions_ended ON sessions (status, updated_at);
