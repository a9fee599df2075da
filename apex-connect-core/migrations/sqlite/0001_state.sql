-- apex-connect state schema, version 1.
-- Portable to PostgreSQL: timestamps are Unix milliseconds (BIGINT), JSON is TEXT,
-- compare-and-swap is `version = version + 1 ... WHERE version = ?`.

CREATE TABLE IF NOT EXISTS connections (
    id            TEXT    NOT NULL PRIMARY KEY,
    platform      TEXT    NOT NULL,
    config        TEXT    NOT NULL,           -- JSON, never secrets
    status        TEXT    NOT NULL,           -- active | needs_reauth | disabled | failing
    status_detail TEXT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

-- Encrypted token sets. A deleted token set keeps its row (ciphertext NULL) so its version
-- keeps growing: a process holding a version from before the delete can never win a CAS.
CREATE TABLE IF NOT EXISTS tokens (
    connection  TEXT    NOT NULL PRIMARY KEY,
    ciphertext  BLOB,
    version     BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- Cursors per (connection, stream); a reset keeps the row with token NULL (same reason).
CREATE TABLE IF NOT EXISTS cursors (
    connection  TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    token       TEXT,
    version     BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (connection, stream)
);

CREATE TABLE IF NOT EXISTS sync_runs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,   -- BIGSERIAL on PostgreSQL
    connection        TEXT    NOT NULL,
    stream            TEXT    NOT NULL,
    kind              TEXT    NOT NULL,                    -- full | incremental
    status            TEXT    NOT NULL,                    -- running | succeeded | failed | cancelled
    started_at        BIGINT  NOT NULL,
    finished_at       BIGINT,
    records_read      BIGINT  NOT NULL DEFAULT 0,
    records_applied   BIGINT  NOT NULL DEFAULT 0,
    records_unchanged BIGINT  NOT NULL DEFAULT 0,
    pages             BIGINT  NOT NULL DEFAULT 0,
    error             TEXT
);
CREATE INDEX IF NOT EXISTS sync_runs_by_stream ON sync_runs (connection, stream, id);

-- The durable webhook inbox. `status`: pending | done | dead. A pending event whose
-- `lease_until` is in the future is in flight (claimed by `lease_owner`).
CREATE TABLE IF NOT EXISTS inbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    platform        TEXT    NOT NULL,
    connection      TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    received_at     BIGINT  NOT NULL,
    headers         TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    finished_at     BIGINT,
    UNIQUE (platform, connection, event_id)
);
CREATE INDEX IF NOT EXISTS inbox_due ON inbox (status, next_attempt_at, received_at, id);

-- Records written by the SQLite sink: one row per (connection, stream, id), highest version wins.
CREATE TABLE IF NOT EXISTS records (
    connection  TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    op          TEXT    NOT NULL,             -- upsert | delete
    version     BIGINT,
    updated_at  BIGINT,
    raw         TEXT    NOT NULL,             -- JSON
    entity      TEXT,                         -- JSON
    synced_at   BIGINT  NOT NULL,
    PRIMARY KEY (connection, stream, id)
);
