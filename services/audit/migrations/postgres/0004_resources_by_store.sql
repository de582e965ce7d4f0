-- An event's resources are now inserted by the store, from the resources it
-- already read out of the record, in the same transaction as the event
-- (`insert_events`), instead of by a trigger that parsed every record's JSON
-- again inside the database.
DROP TRIGGER events_index_resources ON events;
DROP FUNCTION events_index_resources();
