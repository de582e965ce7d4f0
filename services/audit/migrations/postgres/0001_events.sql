-- The event store. Every event keeps its CloudTrail-shaped record as JSON
-- text beside the columns LookupEvents filters on. `seq` is the order of
-- arrival: pages and (later) trail delivery and digest chains follow it.
CREATE TABLE events (
    seq            BIGSERIAL PRIMARY KEY,
    event_id       TEXT NOT NULL UNIQUE,
    event_time_ms  BIGINT NOT NULL,
    event_source   TEXT NOT NULL,
    event_name     TEXT NOT NULL,
    read_only      BOOLEAN NOT NULL,
    username       TEXT,
    account_id     TEXT,
    trusted        BOOLEAN NOT NULL,
    trace_id       TEXT,
    received_at_ms BIGINT NOT NULL,
    record         TEXT NOT NULL
);

CREATE INDEX events_by_time ON events (event_time_ms, seq);
CREATE INDEX events_by_name ON events (event_name, event_time_ms);
CREATE INDEX events_by_username ON events (username, event_time_ms);
CREATE INDEX events_by_source ON events (event_source, event_time_ms);

-- The resources an event names, for the ResourceType and ResourceName
-- lookup attributes.
CREATE TABLE event_resources (
    seq           BIGINT NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    resource_type TEXT NOT NULL,
    resource_name TEXT NOT NULL
);

CREATE INDEX event_resources_by_name ON event_resources (resource_name, seq);
CREATE INDEX event_resources_by_type ON event_resources (resource_type, seq);
CREATE INDEX event_resources_by_seq ON event_resources (seq);
