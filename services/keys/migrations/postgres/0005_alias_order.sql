-- Aliases are listed, and their list markers compared, in byte order: the
-- order ListAliases merges the predefined aliases into the stored ones in,
-- whatever collation the database was created with. (SQLite compares text
-- bytewise already.)
ALTER TABLE aliases ALTER COLUMN alias_name TYPE TEXT COLLATE "C";
