-- One row per account that has made a rule. PutRule holds this row's lock
-- while it counts the account's rules and writes, so two PutRule calls at
-- once cannot both see room for one more rule and leave the account above
-- its quota.
CREATE TABLE rule_accounts (
    account_id TEXT PRIMARY KEY
);
