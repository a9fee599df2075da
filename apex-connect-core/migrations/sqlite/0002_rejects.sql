-- apex-connect state schema, version 2: quarantined records and their count per run.

ALTER TABLE sync_runs ADD COLUMN records_rejected BIGINT NOT NULL DEFAULT 0;

-- Records that could not be read (stage `parse`) or mapped (stage `map`), kept with their
-- bytes as received and the error, never dropped; re-driven after a fix. One row per object:
-- `key` is `id:<object id>`, or the body's sha256 when no id could be read.
CREATE TABLE IF NOT EXISTS rejects (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,   -- BIGSERIAL on PostgreSQL
    connection    TEXT    NOT NULL,
    stream        TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    stage         TEXT    NOT NULL,                    -- parse | map
    record_id     TEXT,
    parent        TEXT,
    op            TEXT    NOT NULL,                    -- upsert | delete
    version       BIGINT,
    updated_at    BIGINT,
    raw           BLOB    NOT NULL,
    error         TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 1,
    first_seen_at BIGINT  NOT NULL,
    last_seen_at  BIGINT  NOT NULL,
    UNIQUE (connection, stream, key)
);
CREATE INDEX IF NOT EXISTS rejects_by_connection ON rejects (connection, stream, id);
