-- One row per account that has made a customer managed key. CreateKey holds
-- this row's lock while it counts the account's customer managed keys and
-- writes, so keys made at once cannot together pass the account's quota.
CREATE TABLE key_accounts (
    account_id TEXT PRIMARY KEY
);

-- The count CreateKey takes, read from the index.
CREATE INDEX keys_by_account_manager ON keys (account_id, key_manager);
