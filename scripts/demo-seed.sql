-- A small shop: what the demo backs up, restores into staging and checks.
CREATE TABLE customers (
  id bigserial PRIMARY KEY,
  email text NOT NULL UNIQUE,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES customers (id),
  total numeric(12, 2) NOT NULL CHECK (total >= 0),
  status text NOT NULL DEFAULT 'new',
  placed_at timestamptz NOT NULL
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE VIEW revenue_by_day AS
  SELECT date_trunc('day', placed_at) AS day, sum(total) AS revenue FROM orders GROUP BY 1;

INSERT INTO customers (email, name)
SELECT 'customer' || g || '@example.com', 'Customer ' || g FROM generate_series(1, 2000) g;
INSERT INTO orders (customer_id, total, status, placed_at)
SELECT 1 + (g % 2000), round((random() * 500)::numeric, 2), (ARRAY['new', 'paid', 'shipped'])[1 + g % 3],
       timestamptz '2026-01-01' + g * interval '7 minutes'
FROM generate_series(1, 50000) g;
