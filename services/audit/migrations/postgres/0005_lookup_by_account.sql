-- LookupEvents always asks for one account's events. The lookup indexes
-- lead with the account, so that an account with few events does not walk
-- every other account's: one for lookups without an attribute, and the
-- attribute indexes in place of those that did not name the account. Ties
-- in time are ordered by event id, which the caller sees anyway, so that a
-- NextToken carries nothing about other accounts' events.
CREATE INDEX events_by_account ON events (account_id, event_time_ms, event_id);
DROP INDEX events_by_name;
DROP INDEX events_by_username;
DROP INDEX events_by_source;
CREATE INDEX events_by_name ON events (account_id, event_name, event_time_ms, event_id);
CREATE INDEX events_by_username ON events (account_id, username, event_time_ms, event_id);
CREATE INDEX events_by_source ON events (account_id, event_source, event_time_ms, event_id);
