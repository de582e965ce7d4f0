-- Key policies and grants. Every key has one policy document (the policy
-- named "default"); an empty document means the AWS default key policy
-- (the account root may do everything, which defers to identity policies).
ALTER TABLE keys ADD COLUMN policy TEXT NOT NULL DEFAULT '';

-- A grant lets one grantee principal perform some operations on one key,
-- optionally only with a given encryption context. The token secret makes
-- grant tokens unguessable from the grant id alone.
CREATE TABLE grants (
    grant_id           TEXT PRIMARY KEY,
    key_id             TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    key_account        TEXT NOT NULL,
    name               TEXT NOT NULL,
    grantee_principal  TEXT NOT NULL,
    retiring_principal TEXT,
    issuing_account    TEXT NOT NULL,
    operations         TEXT NOT NULL,
    constraint_kind    TEXT,
    constraint_context TEXT,
    token_secret       TEXT NOT NULL,
    created_at_ms      BIGINT NOT NULL
);

CREATE INDEX grants_by_key_grantee ON grants (key_id, grantee_principal);
CREATE INDEX grants_by_retiring_principal ON grants (retiring_principal, grant_id);
