-- A database full of objects that trip up backup tools.
CREATE SCHEMA "Weird Schema";
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TYPE address AS (street text, city text, zip varchar(10));

CREATE TABLE "select" ("from" integer PRIMARY KEY, "Order" text, "group" mood);
INSERT INTO "select" VALUES (1, 'first', 'happy'), (2, 'zwei', 'sad'), (3, NULL, NULL);

CREATE TABLE "Weird Schema"."Mixed Case; Table" (
  id bigserial PRIMARY KEY,
  "Ünïcødé" text,
  amount positive_int,
  home address,
  payload jsonb,
  blob bytea,
  price numeric(12, 2),
  ratio double precision,
  happened timestamptz,
  total numeric GENERATED ALWAYS AS (price * 2) STORED
);
INSERT INTO "Weird Schema"."Mixed Case; Table" ("Ünïcødé", amount, home, payload, blob, price, ratio, happened)
SELECT 'ξεσκεπάζω τὴν ψυχοφθόρα βδελυγμία ' || g || ' 日本語 🙂',
       g,
       ROW('Main St ' || g, 'Zürich', '80' || g)::address,
       jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b'), 'nested', jsonb_build_object('x', g * 1.5)),
       decode(md5(g::text), 'hex'),
       g * 1.25,
       g / 3.0,
       '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 hour'
FROM generate_series(1, 500) g;

CREATE TABLE measurements (id int NOT NULL, taken date NOT NULL, value real) PARTITION BY RANGE (taken);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measurements SELECT g, DATE '2025-06-01' + g, g * 0.5 FROM generate_series(1, 400) g;

CREATE SEQUENCE invoice_numbers START 1000 INCREMENT 7;
SELECT nextval('invoice_numbers') FROM generate_series(1, 5);

CREATE VIEW happy_rows AS SELECT "from", "Order" FROM "select" WHERE "group" = 'happy';
CREATE MATERIALIZED VIEW amount_summary AS
  SELECT count(*) AS n, sum(amount) AS total FROM "Weird Schema"."Mixed Case; Table";

CREATE FUNCTION touch_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW."Order" := coalesce(NEW."Order", 'unset');
  RETURN NEW;
END $$;
CREATE TRIGGER "before insert" BEFORE INSERT ON "select" FOR EACH ROW EXECUTE FUNCTION touch_order();

CREATE TABLE documents (id serial PRIMARY KEY, owner text NOT NULL, body text);
ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON documents USING (owner = current_user);
INSERT INTO documents (owner, body) VALUES ('postgres', 'secret plans'), ('alice', 'shopping list');

CREATE TABLE files (id serial PRIMARY KEY, name text, content oid);
INSERT INTO files (name, content) VALUES ('hello.txt', lo_from_bytea(0, 'hello large object'::bytea));

COMMENT ON TABLE "select" IS 'a table named after a reserved word';
COMMENT ON COLUMN "Weird Schema"."Mixed Case; Table"."Ünïcødé" IS 'ünïcødé comment';
COMMENT ON SCHEMA "Weird Schema" IS 'schema with a space';
