-- An event's resources are indexed by the database, from the record, when
-- the event row is inserted. The event and its resources are then stored by
-- one statement: atomic without an explicit transaction, and one round trip
-- per batch instead of four (begin, events, resources, commit), which was
-- most of the time a batch spent in the store.
--
-- Only trusted events have resources, each an object whose "type" and "ARN"
-- are strings (as `stored_event` reads them). The CASE guards keep a
-- malformed element from being parsed as JSON at all.
CREATE TRIGGER events_index_resources AFTER INSERT ON events
WHEN NEW.trusted AND json_type(NEW.record, '$.resources') = 'array'
BEGIN
    INSERT INTO event_resources (seq, resource_type, resource_name)
    SELECT NEW.seq,
           CASE WHEN r.type = 'object' THEN json_extract(r.value, '$.type') END,
           CASE WHEN r.type = 'object' THEN json_extract(r.value, '$.ARN') END
    FROM json_each(NEW.record, '$.resources') AS r
    WHERE r.type = 'object'
      AND (CASE WHEN r.type = 'object' THEN json_type(r.value, '$.type') END) = 'text'
      AND (CASE WHEN r.type = 'object' THEN json_type(r.value, '$.ARN') END) = 'text';
END;
