-- Audit events of committed changes not yet acknowledged by the audit
-- service (`required` mode). A row is written in the same transaction as the
-- change it records and removed once the audit service acknowledged it.
CREATE TABLE audit_outbox (
    event_id      TEXT PRIMARY KEY,
    boot_id       TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    record        TEXT NOT NULL
);

CREATE INDEX audit_outbox_by_age ON audit_outbox (created_at_ms);
