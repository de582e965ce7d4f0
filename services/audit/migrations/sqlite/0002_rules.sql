-- EventBridge-style event rules of each account, their webhook targets, and
-- the deliveries that failed after every retry.
CREATE TABLE rules (
    account_id    TEXT NOT NULL,
    name          TEXT NOT NULL,
    event_pattern TEXT NOT NULL,
    enabled       BOOLEAN NOT NULL,
    description   TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

CREATE TABLE rule_targets (
    account_id        TEXT NOT NULL,
    rule_name         TEXT NOT NULL,
    target_id         TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    signing_secret    BLOB NOT NULL,
    max_retries       INTEGER NOT NULL,
    max_event_age_s   INTEGER NOT NULL,
    PRIMARY KEY (account_id, rule_name, target_id),
    FOREIGN KEY (account_id, rule_name) REFERENCES rules (account_id, name) ON DELETE CASCADE
);

CREATE TABLE failed_deliveries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   TEXT NOT NULL,
    rule_name    TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    last_error   TEXT NOT NULL,
    failed_at_ms BIGINT NOT NULL
);

CREATE INDEX failed_deliveries_by_rule ON failed_deliveries (account_id, rule_name, seq);
