-- A smoke query run by every drill against the restored database.
-- It must return exactly one row whose first column is true. Copy this file and write
-- your own: "the newest order is less than a day older than the backup", "every account
-- has an owner", and so on. This one holds for any database: the catalog is readable and
-- there is no invalid index.
SELECT count(*) = 0 AS no_invalid_indexes FROM pg_index WHERE NOT indisvalid;
