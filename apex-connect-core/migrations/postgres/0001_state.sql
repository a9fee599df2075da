-- apex-connect state schema on PostgreSQL, version 1: the tables of the SQLite schema
-- (migrations/sqlite/0001 + 0002) with PostgreSQL types. Timestamps are Unix milliseconds
-- (BIGINT) taken from the application's clock, as on SQLite, so leases and retry times mean
-- the same on both backends (nodes sharing a database keep their clocks in sync with NTP).
-- Run by `sqlx::migrate!` under its advisory lock: several processes starting at once apply
-- it exactly once.

CREATE TABLE connections (
    id            TEXT    NOT NULL PRIMARY KEY,
    platform      TEXT    NOT NULL,
    config        JSONB   NOT NULL,           -- never secrets
    status        TEXT    NOT NULL,           -- active | needs_reauth | disabled | failing
    status_detail TEXT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

-- Encrypted token sets (XChaCha20-Poly1305, the connection id as associated data). A deleted
-- token set keeps its row (ciphertext NULL) so its version keeps growing: a process holding a
-- version from before the delete can never win a compare-and-swap.
CREATE TABLE tokens (
    connection  TEXT    NOT NULL PRIMARY KEY,
    ciphertext  BYTEA,
    version     BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- Cursors per (connection, stream); a reset keeps the row with token NULL (same reason).
CREATE TABLE cursors (
    connection  TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    token       TEXT,
    version     BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (connection, stream)
);

CREATE TABLE sync_runs (
    id                BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection        TEXT    NOT NULL,
    stream            TEXT    NOT NULL,
    kind              TEXT    NOT NULL,       -- full | incremental
    status            TEXT    NOT NULL,       -- running | succeeded | failed | cancelled
    started_at        BIGINT  NOT NULL,
    finished_at       BIGINT,
    records_read      BIGINT  NOT NULL DEFAULT 0,
    records_applied   BIGINT  NOT NULL DEFAULT 0,
    records_unchanged BIGINT  NOT NULL DEFAULT 0,
    records_rejected  BIGINT  NOT NULL DEFAULT 0,
    pages             BIGINT  NOT NULL DEFAULT 0,
    error             TEXT
);
CREATE INDEX sync_runs_by_stream ON sync_runs (connection, stream, id);
CREATE INDEX sync_runs_by_connection ON sync_runs (connection, id);

-- The durable webhook inbox. `status`: pending | done | dead. A pending event whose
-- `lease_until` is in the future is in flight (claimed by `lease_owner`). Claims lock the
-- rows they take with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never wait for each
-- other and never take the same event.
CREATE TABLE inbox (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    platform        TEXT    NOT NULL,
    connection      TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    received_at     BIGINT  NOT NULL,
    headers         TEXT    NOT NULL,         -- JSON, kept as text
    body            BYTEA   NOT NULL,
    status          TEXT    NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    finished_at     BIGINT,
    UNIQUE (platform, connection, event_id)
);
-- Claims scan pending events oldest first; done and dead events stay out of this index.
CREATE INDEX inbox_pending ON inbox (received_at, id) WHERE status = 'pending';
CREATE INDEX inbox_dead ON inbox (id) WHERE status = 'dead';

-- Wake-ups: every statement that inserts inbox rows notifies `apex_connect_inbox` at commit
-- (PostgreSQL folds identical notifications of one transaction into one), whoever wrote them.
CREATE FUNCTION apex_connect_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows) THEN
        PERFORM pg_notify('apex_connect_inbox', '');
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER inbox_notify AFTER INSERT ON inbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION apex_connect_inbox_notify();

-- Quarantined records (stage `parse` or `map`), kept with their bytes as received and the
-- error; one row per object: `key` is `id:<object id>`, or the body's sha256 when no id could
-- be read.
CREATE TABLE rejects (
    id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection    TEXT    NOT NULL,
    stream        TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    stage         TEXT    NOT NULL,           -- parse | map
    record_id     TEXT,
    parent        TEXT,
    op            TEXT    NOT NULL,           -- upsert | delete
    version       BIGINT,
    updated_at    BIGINT,
    raw           BYTEA   NOT NULL,
    error         TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 1,
    first_seen_at BIGINT  NOT NULL,
    last_seen_at  BIGINT  NOT NULL,
    UNIQUE (connection, stream, key)
);
CREATE INDEX rejects_by_connection ON rejects (connection, stream, id);

-- Records written by the PostgreSQL sink: one row per (connection, stream, id), highest
-- version wins. `raw` and `entity` are JSONB. JSON that JSONB cannot hold (a `\u0000` escape,
-- a number beyond NUMERIC's range) is kept as exact text in `raw_text` / `entity_text`
-- instead, with the JSONB column NULL: nothing is dropped.
CREATE TABLE records (
    connection  TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    op          TEXT    NOT NULL,             -- upsert | delete
    version     BIGINT,
    updated_at  BIGINT,
    raw         JSONB,
    raw_text    TEXT,
    entity      JSONB,
    entity_text TEXT,
    synced_at   BIGINT  NOT NULL,
    PRIMARY KEY (connection, stream, id)
);

-- JSON text to JSONB, or NULL when JSONB cannot hold it (used by the sink's slow path only:
-- each call is a subtransaction).
CREATE FUNCTION apex_connect_try_jsonb(t TEXT) RETURNS JSONB LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;
