-- The order system's schema. Constraints, not only code, keep stock from being oversold:
-- whatever a bug in the functions did, PostgreSQL refuses a row with reserved > inventory.

CREATE TABLE products (
    id          uuid PRIMARY KEY,
    sku         text UNIQUE,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description text CHECK (char_length(description) <= 2000),
    price       numeric(11, 2) NOT NULL CHECK (price >= 0),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    inventory   bigint NOT NULL CHECK (inventory >= 0),
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT reserved_within_inventory CHECK (reserved <= inventory)
);

CREATE TABLE orders (
    id          uuid PRIMARY KEY,
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'processed', 'shipped', 'delivered', 'cancelled', 'rejected')),
    -- Which single path the order's stock has taken: reserved at creation, then committed
    -- (shipped) or released (cancelled, rejected) exactly once. The processor moves it only
    -- from 'reserved', in the same transaction as the stock change.
    stock       text NOT NULL DEFAULT 'reserved' CHECK (stock IN ('reserved', 'committed', 'released')),
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    customer_id text CHECK (char_length(customer_id) BETWEEN 1 AND 128),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT committed_only_when_shipped
        CHECK (stock <> 'committed' OR status IN ('shipped', 'delivered')),
    CONSTRAINT released_only_when_closed
        CHECK (stock <> 'released' OR status IN ('cancelled', 'rejected'))
);
CREATE INDEX orders_by_status ON orders (status, id);

CREATE TABLE order_items (
    order_id   uuid NOT NULL REFERENCES orders (id),
    product_id uuid NOT NULL REFERENCES products (id),
    quantity   integer NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    unit_price numeric(11, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX order_items_by_product ON order_items (product_id);

-- Statuses never repeat (the transition table has no cycles), so the key also refuses a
-- status change recorded twice.
CREATE TABLE order_status_history (
    seq      bigint GENERATED ALWAYS AS IDENTITY,
    order_id uuid NOT NULL REFERENCES orders (id),
    status   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, status)
);

-- Every change of inventory or reserved, in the transaction that made it: per product the
-- deltas sum to the current inventory and reserved.
CREATE TABLE inventory_ledger (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id      uuid NOT NULL REFERENCES products (id),
    inventory_delta bigint NOT NULL,
    reserved_delta  bigint NOT NULL,
    reason          text NOT NULL CHECK (reason IN ('initial', 'adjustment', 'reserve', 'commit', 'release')),
    order_id        uuid REFERENCES orders (id),
    note            text,
    at              timestamptz NOT NULL DEFAULT now(),
    CHECK (inventory_delta <> 0 OR reserved_delta <> 0),
    CHECK ((order_id IS NOT NULL) = (reason IN ('reserve', 'commit', 'release')))
);
CREATE INDEX inventory_ledger_by_product ON inventory_ledger (product_id);
-- A second guard behind the order's stock state: an order touches a product's stock at most
-- once per kind of effect.
CREATE UNIQUE INDEX inventory_ledger_once_per_order
    ON inventory_ledger (order_id, product_id, reason) WHERE order_id IS NOT NULL;

-- Only successful order creations are stored (API.md): the response is replayed verbatim.
CREATE TABLE idempotency_keys (
    key           text PRIMARY KEY,
    -- The canonical form of the request the key was first used with.
    fingerprint   text NOT NULL,
    order_id      uuid NOT NULL REFERENCES orders (id),
    response_body text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Transactional outbox: written with the state change, published after commit (and by the
-- relay for whatever was left), marked sent once the broker confirmed it.
CREATE TABLE outbox (
    message_id   uuid PRIMARY KEY,
    routing_key  text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
