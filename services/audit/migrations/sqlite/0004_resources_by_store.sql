-- An event's resources are now inserted by the store, from the resources it
-- already read out of the record, in the same transaction as the event
-- (`insert_events`). The trigger parsed every record's JSON a second and a
-- third time inside the database: about a fifth of SQLite's work per event.
DROP TRIGGER events_index_resources;
