-- The entity graph (apex-connect-identity) on PostgreSQL: the tables, columns and indexes of
-- `migrations/sqlite/0001_entity_graph.sql`, with `BIGSERIAL` ids where SQLite uses its rowid
-- (`INTEGER PRIMARY KEY`). Tables are prefixed `eg_` so that the graph can share the state
-- database of `PgStore`; its migrations are tracked in `_apex_identity_migrations`.
--
-- JSON columns (`src`, `origin`, `fields`, `keys`, `detail`) stay `TEXT`: they are written and
-- compared as text (`src` and `origin` are unique keys), never queried inside, and `jsonb`
-- would refuse the `\u0000` escapes a hostile record may carry.

-- Source entities: one row per (connection, platform, object type, id), kept as a tombstone
-- after a delete (so that a replayed older upsert cannot resurrect it, and a user split that
-- names it still applies when it comes back).
CREATE TABLE eg_nodes (
    id          BIGSERIAL PRIMARY KEY,
    src         TEXT     NOT NULL UNIQUE,  -- JSON ["connection","platform","object_type","id"]
    origin      TEXT     NOT NULL,         -- JSON ["connection","stream","record_id"]
    connection  TEXT     NOT NULL,
    platform    TEXT     NOT NULL,
    object_type TEXT     NOT NULL,
    source_id   TEXT     NOT NULL,
    stream      TEXT     NOT NULL,
    record_id   TEXT     NOT NULL,
    kind        TEXT     NOT NULL,         -- person, organization, deal, ..., other:<name>
    version     BIGINT,
    updated_at  BIGINT,                    -- Unix ms, from the platform
    synced_at   BIGINT   NOT NULL,         -- Unix ms, when written here
    deleted     SMALLINT NOT NULL DEFAULT 0,
    digest      TEXT     NOT NULL,         -- content hash: replays are no-ops
    fields      TEXT     NOT NULL,         -- JSON {"name", "attributes", "custom_fields"}
    cluster     BIGINT                     -- canonical entity; NULL for tombstones
);
CREATE INDEX eg_nodes_origin ON eg_nodes (origin);
CREATE INDEX eg_nodes_cluster ON eg_nodes (cluster);

-- Normalized identity keys of live source entities.
CREATE TABLE eg_keys (
    node BIGINT NOT NULL,
    key  TEXT   NOT NULL,                  -- "email:ann@acme.com", "domain:acme.com", ...
    kind TEXT   NOT NULL,                  -- the node's kind: keys merge within a kind
    role TEXT   NOT NULL,                  -- merge | weak | link
    raw  TEXT   NOT NULL,                  -- the value as the source had it
    PRIMARY KEY (node, key)
);
CREATE INDEX eg_keys_key ON eg_keys (key, kind);

-- Canonical entities. Ids are never reused (the resolver allocates them under the write
-- lock); a merged cluster keeps its row as an alias.
CREATE TABLE eg_clusters (
    id          BIGINT PRIMARY KEY,
    kind        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    merged_into BIGINT,                    -- set when absorbed by a merge
    retired_at  BIGINT                     -- set when merged or dissolved
);

-- Relations asserted by records (an entity's own, or a relation-only record's).
CREATE TABLE eg_relations (
    origin   TEXT NOT NULL,                -- the record asserting it
    from_src TEXT NOT NULL,
    kind     TEXT NOT NULL,
    to_src   TEXT NOT NULL,
    PRIMARY KEY (origin, from_src, kind, to_src)
);
CREATE INDEX eg_relations_from ON eg_relations (from_src);
CREATE INDEX eg_relations_to ON eg_relations (to_src);

-- What happened, and why: joins and merges with the keys that joined them, splits.
CREATE TABLE eg_events (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    kind    TEXT   NOT NULL,               -- join | merge | split | unsplit | dissolve
    cluster BIGINT NOT NULL,
    other   BIGINT,
    node    BIGINT,
    keys    TEXT   NOT NULL,               -- JSON array of keys
    detail  TEXT
);
CREATE INDEX eg_events_cluster ON eg_events (cluster);
CREATE INDEX eg_events_other ON eg_events (other);
CREATE INDEX eg_events_kind ON eg_events (kind, id);

-- User corrections: source entities that must not be in one canonical entity.
CREATE TABLE eg_splits (
    id         BIGSERIAL PRIMARY KEY,
    cluster    BIGINT   NOT NULL,
    created_at BIGINT   NOT NULL,
    note       TEXT,
    active     SMALLINT NOT NULL DEFAULT 1,
    changed_at BIGINT
);
CREATE INDEX eg_splits_active ON eg_splits (active);
CREATE TABLE eg_cannot_link (
    split BIGINT NOT NULL,
    a     BIGINT NOT NULL,
    b     BIGINT NOT NULL,
    PRIMARY KEY (split, a, b)
);
CREATE INDEX eg_cannot_link_a ON eg_cannot_link (a);
CREATE INDEX eg_cannot_link_b ON eg_cannot_link (b);
