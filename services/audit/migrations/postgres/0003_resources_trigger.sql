-- An event's resources are indexed by the database, from the record, when
-- the event row is inserted. The event and its resources are then stored by
-- one statement: atomic without an explicit transaction, and one round trip
-- per batch instead of four (begin, events, resources, commit).
--
-- Only trusted events have resources, each an object whose "type" and "ARN"
-- are strings (as `stored_event` reads them). `json`, not `jsonb`: a record
-- may carry an escaped NUL, which `jsonb` refuses.
CREATE FUNCTION events_index_resources() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF json_typeof(NEW.record::json -> 'resources') = 'array' THEN
        INSERT INTO event_resources (seq, resource_type, resource_name)
        SELECT NEW.seq, r.value ->> 'type', r.value ->> 'ARN'
        FROM json_array_elements(NEW.record::json -> 'resources') AS r(value)
        WHERE json_typeof(r.value) = 'object'
          AND json_typeof(r.value -> 'type') = 'string'
          AND json_typeof(r.value -> 'ARN') = 'string';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_index_resources AFTER INSERT ON events
FOR EACH ROW WHEN (NEW.trusted) EXECUTE FUNCTION events_index_resources();
