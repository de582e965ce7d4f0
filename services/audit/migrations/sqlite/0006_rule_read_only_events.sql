-- EventBridge's third rule state, ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS:
-- a plain ENABLED rule does not receive read-only management events (the
-- Describe, Get and List calls; Coffer's cryptographic calls are data events,
-- which both states receive); a rule in this state does.
-- Kept beside `enabled`, so that DisableRule and EnableRule keep the choice.
ALTER TABLE rules ADD COLUMN read_only_events BOOLEAN NOT NULL DEFAULT FALSE;
