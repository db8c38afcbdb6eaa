-- Schemas that trip up a loader reading pg_restore's data script (tests/restore/test_parallel.py):
-- inheritance, partitions, names with newlines, tabs and backslashes, "\." rows, generated
-- columns, domains and rows larger than a COPY block. No large objects: the loader route.

-- Inheritance, two levels deep and from two parents: count(*) of a parent includes its children.
CREATE TABLE parent (a int);
CREATE TABLE child () INHERITS (parent);
CREATE TABLE grandchild (extra text) INHERITS (child);
CREATE TABLE other_parent (b int);
CREATE TABLE two_parents () INHERITS (parent, other_parent);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (10), (11), (12);
INSERT INTO grandchild VALUES (100, 'deep');
INSERT INTO two_parents VALUES (1000, 2000);

-- Partitions, one of them partitioned again.
CREATE TABLE events (id int NOT NULL, region text NOT NULL, at date NOT NULL) PARTITION BY LIST (region);
CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu') PARTITION BY RANGE (at);
CREATE TABLE events_eu_2026 PARTITION OF events_eu FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE events_other PARTITION OF events DEFAULT;
INSERT INTO events SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, DATE '2026-01-01' + g % 300
FROM generate_series(1, 3000) g;

-- Names a COPY statement prints across lines, or with escapes.
CREATE TABLE "new
line" ("first
column" int, "tab	col" text, "back\slash" text);
INSERT INTO "new
line" VALUES (1, 'a', 'b'), (2, E'\\.', E'x\ny');
CREATE TABLE "tab	table" (id int, "quote""d" text);
INSERT INTO "tab	table" VALUES (1, 'one'), (2, 'two');
CREATE TABLE "back\slash" (id int, v text);
INSERT INTO "back\slash" VALUES (1, E'\\'), (2, E'\\\\.');
CREATE SCHEMA "line
schema";
CREATE TABLE "line
schema"."t" (id int);
INSERT INTO "line
schema"."t" VALUES (1), (2), (3);

-- Rows that look like the end of COPY data, or like a COPY statement.
CREATE TABLE markers (id int PRIMARY KEY, body text);
INSERT INTO markers VALUES
  (1, E'\\.'), (2, E'\n\\.\n'), (3, E'\\.\\.'), (4, 'COPY public.markers (id, body) FROM stdin;'),
  (5, E'\r\n'), (6, NULL), (7, '');

-- Generated columns (not in the COPY column list) and domains with checks.
CREATE DOMAIN percent AS numeric(5, 2) CHECK (VALUE BETWEEN 0 AND 100);
CREATE DOMAIN nonempty AS text NOT NULL CHECK (VALUE <> '');
CREATE TABLE scores (
  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  who nonempty,
  score percent,
  doubled numeric GENERATED ALWAYS AS (score * 2) STORED
);
INSERT INTO scores (who, score) SELECT 'player ' || g, g % 101 FROM generate_series(1, 1000) g;

-- Rows larger than a COPY block (the tests cut blocks at 64 KiB; the default is 4 MiB).
CREATE TABLE large_rows (id int PRIMARY KEY, body text);
INSERT INTO large_rows SELECT g, repeat(md5(g::text), 150000) FROM generate_series(1, 2) g;
