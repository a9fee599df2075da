-- apex-connect state schema on PostgreSQL, version 2: the scheduler's jobs and the ledger
-- sink's table (migrations/sqlite/0003 with PostgreSQL types). Timestamps are Unix
-- milliseconds from the application's clock, as everywhere else in this schema.

-- One row per scheduled (connection, stream). A row whose `lease_until` is in the future is
-- running (owned by `lease_owner`); `next_due_at` survives restarts. Claims lock the rows they
-- take with `FOR UPDATE SKIP LOCKED`, so two processes never both get a job.
CREATE TABLE schedules (
    connection       TEXT    NOT NULL,
    stream           TEXT    NOT NULL,
    spec             TEXT    NOT NULL,             -- "every 15m jitter 30s" | "cron 0 */5 * * * *"
    full_sync        BOOLEAN NOT NULL DEFAULT FALSE,
    next_due_at      BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_until      BIGINT,
    failures         BIGINT  NOT NULL DEFAULT 0,   -- consecutive failed runs
    runs             BIGINT  NOT NULL DEFAULT 0,
    last_started_at  BIGINT,
    last_finished_at BIGINT,
    last_status      TEXT,                          -- succeeded | failed | cancelled
    last_error       TEXT,
    updated_at       BIGINT  NOT NULL,
    PRIMARY KEY (connection, stream)
);
CREATE INDEX schedules_due ON schedules (next_due_at);

-- The ledger sink: records with a count of how often the sink actually applied a change.
-- `raw` is the JSON text exactly as received (TEXT, not JSONB: a replay is recognised by
-- byte equality, as on SQLite).
CREATE TABLE sink_ledger (
    connection       TEXT    NOT NULL,
    stream           TEXT    NOT NULL,
    id               TEXT    NOT NULL,
    op               TEXT    NOT NULL,
    version          BIGINT,
    raw              TEXT    NOT NULL,
    applies          BIGINT  NOT NULL,
    first_applied_at BIGINT  NOT NULL,
    last_applied_at  BIGINT  NOT NULL,
    PRIMARY KEY (connection, stream, id)
);
