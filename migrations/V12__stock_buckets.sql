-- Flash sales (API.md, Products): a product's stock lives in `stock_buckets` rows that are
-- locked independently, so that many orders for one product reserve at the same time instead
-- of queueing on one row. Every product has at least one bucket (k = 1 is one row): there is
-- one code path, and the products row no longer takes an order's lock. The CHECKs that made
-- overselling impossible on `products` now hold per bucket; per-product totals are sums of
-- rows that each satisfy them, so they hold for the totals too.

CREATE TABLE stock_buckets (
    product_id uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    bucket     smallint NOT NULL CHECK (bucket BETWEEN 0 AND 63),
    inventory  bigint NOT NULL CHECK (inventory >= 0),
    reserved   bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (product_id, bucket),
    CONSTRAINT bucket_reserved_within_inventory CHECK (reserved <= inventory)
);

INSERT INTO stock_buckets (product_id, bucket, inventory, reserved)
SELECT id, 0, inventory, reserved FROM products;

-- The exact per-product totals. Also created, over `products`, by V11 on another branch: the
-- same columns, so `CREATE OR REPLACE` works whether or not V11 ran first.
CREATE OR REPLACE VIEW product_stock AS
SELECT product_id, sum(inventory)::bigint AS inventory, sum(reserved)::bigint AS reserved
FROM stock_buckets
GROUP BY product_id;

ALTER TABLE products
    DROP COLUMN inventory,
    DROP COLUMN reserved,
    ADD COLUMN stock_buckets smallint NOT NULL DEFAULT 1 CHECK (stock_buckets BETWEEN 1 AND 64),
    ADD COLUMN max_per_customer integer CHECK (max_per_customer BETWEEN 1 AND 10000);

-- maxPerCustomer: a customer's units of a capped product in orders that are not cancelled or
-- rejected. Placement raises `held` under the row lock with the guard `held + q <= limit`, in
-- the statement that reserves; a release gives the units back. `order_items.held` says which
-- lines counted here, so a release gives back exactly what its placement took, whatever the
-- cap became since.
CREATE TABLE customer_holdings (
    product_id  uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    customer_id text NOT NULL,
    held        integer NOT NULL CHECK (held >= 0),
    PRIMARY KEY (product_id, customer_id)
);

ALTER TABLE order_items ADD COLUMN held boolean NOT NULL DEFAULT false;
