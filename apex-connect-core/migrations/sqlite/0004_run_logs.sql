-- apex-connect state schema, version 4: what an admin dashboard shows about sync runs.

-- Per-day statistics (`RunStore::run_stats`) read the runs started since a time, per
-- connection: one range of this index per connection.
CREATE INDEX IF NOT EXISTS sync_runs_by_start ON sync_runs (connection, started_at);

-- A connection's latest runs (`list_runs` of one connection, newest first): read backwards
-- from this index, without sorting the connection's whole history.
CREATE INDEX IF NOT EXISTS sync_runs_by_connection ON sync_runs (connection, id);

-- The log lines of each run, numbered from 1 in the order they were appended. Purged with
-- their run (`RunStore::purge_runs`).
CREATE TABLE IF NOT EXISTS run_logs (
    run     BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,       -- Unix milliseconds
    level   TEXT   NOT NULL,       -- error | warn | info | debug | trace
    target  TEXT   NOT NULL,
    message TEXT   NOT NULL,
    PRIMARY KEY (run, seq)
);
