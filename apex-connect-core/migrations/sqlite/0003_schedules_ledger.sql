-- apex-connect state schema, version 3: the scheduler's jobs and the ledger sink's table.
-- Both were the server's own migration (`_apex_server_migrations`) before they moved behind
-- the store traits; `IF NOT EXISTS` keeps database files created by it working unchanged.

-- One row per scheduled (connection, stream). A row whose `lease_until` is in the future is
-- running (owned by `lease_owner`); `next_due_at` survives restarts. Claims are one UPDATE.
CREATE TABLE IF NOT EXISTS schedules (
    connection       TEXT    NOT NULL,
    stream           TEXT    NOT NULL,
    spec             TEXT    NOT NULL,             -- "every 15m jitter 30s" | "cron 0 */5 * * * *"
    full_sync        INTEGER NOT NULL DEFAULT 0,
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
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_due_at);

-- The ledger sink: records with a count of how often the sink actually applied a change.
CREATE TABLE IF NOT EXISTS sink_ledger (
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
