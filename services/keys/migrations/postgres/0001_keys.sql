-- Keys and their material versions. A key has an origin, one or more material
-- versions (rotations, imports) and, for multi-Region keys, a primary/replica
-- role, so later features add rows and columns rather than reshape tables.
CREATE TABLE keys (
    key_id              TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL,
    description         TEXT NOT NULL,
    key_usage           TEXT NOT NULL,
    key_spec            TEXT NOT NULL,
    origin              TEXT NOT NULL,
    key_manager         TEXT NOT NULL,
    key_state           TEXT NOT NULL,
    multi_region        BOOLEAN NOT NULL,
    multi_region_role   TEXT,
    primary_region      TEXT,
    current_material_id TEXT,
    created_at_ms       BIGINT NOT NULL,
    deletion_date_ms    BIGINT,
    updated_at_ms       BIGINT NOT NULL
);

CREATE INDEX keys_by_account ON keys (account_id, key_id);

CREATE TABLE key_materials (
    key_id          TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    material_id     TEXT NOT NULL,
    sealed_material BYTEA NOT NULL,
    origin          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (key_id, material_id)
);

CREATE TABLE key_tags (
    key_id    TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    tag_key   TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (key_id, tag_key)
);
