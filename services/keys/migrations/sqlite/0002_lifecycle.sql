-- Lifecycle: optimistic concurrency, deletion windows, rotation schedules,
-- aliases, and how each material version came to be.
ALTER TABLE keys ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN pending_window_days INTEGER;
ALTER TABLE keys ADD COLUMN rotation_enabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN rotation_period_days INTEGER;
ALTER TABLE keys ADD COLUMN next_rotation_ms INTEGER;

ALTER TABLE key_materials ADD COLUMN rotation_type TEXT;

CREATE INDEX keys_due_for_deletion ON keys (deletion_date_ms) WHERE deletion_date_ms IS NOT NULL;
CREATE INDEX keys_due_for_rotation ON keys (next_rotation_ms) WHERE next_rotation_ms IS NOT NULL;

CREATE TABLE aliases (
    account_id    TEXT NOT NULL,
    alias_name    TEXT NOT NULL,
    target_key_id TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, alias_name)
);

CREATE INDEX aliases_by_target ON aliases (target_key_id);
