-- Who changed what (API.md, Authorization): every status change and every stock movement
-- names the caller's `sub`, or 'system' for the processor's own decisions. Rows written
-- before this migration did not record it: they say 'unknown', except what only the
-- processor can have done (processing, rejecting, and the release of a rejected order).

ALTER TABLE order_status_history
    ADD COLUMN changed_by text NOT NULL DEFAULT 'unknown' CHECK (char_length(changed_by) BETWEEN 1 AND 255);
UPDATE order_status_history SET changed_by = 'system' WHERE status IN ('processed', 'rejected');
ALTER TABLE order_status_history ALTER COLUMN changed_by DROP DEFAULT;

ALTER TABLE inventory_ledger
    ADD COLUMN actor text NOT NULL DEFAULT 'unknown' CHECK (char_length(actor) BETWEEN 1 AND 255);
UPDATE inventory_ledger l SET actor = 'system'
FROM orders o
WHERE l.order_id = o.id AND l.reason = 'release' AND o.status = 'rejected';
ALTER TABLE inventory_ledger ALTER COLUMN actor DROP DEFAULT;
-- A product's ledger is read oldest first, a page at a time (GET /products/{id}/stock-movements).
CREATE INDEX inventory_ledger_by_product_seq ON inventory_ledger (product_id, seq);
DROP INDEX inventory_ledger_by_product;

-- Idempotency keys belong to the caller: the same key from two callers names two requests.
-- Keys stored before belonged to callers nobody recorded; '' matches no caller, so they
-- simply expire.
ALTER TABLE idempotency_keys ADD COLUMN caller text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys ALTER COLUMN caller DROP DEFAULT;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (caller, key);

-- Order search (GET /orders): lists run oldest first on (created_at, id), and each filter
-- combination has an index that serves both the filter and that order, so a page costs
-- `limit` index entries however deep it is. A customer's orders are few, so a customer's
-- list with a status filter reads the customer's index and filters.
CREATE INDEX orders_by_created ON orders (created_at, id);
CREATE INDEX orders_by_status_created ON orders (status, created_at, id);
CREATE INDEX orders_by_customer_created ON orders (customer_id, created_at, id)
    WHERE customer_id IS NOT NULL;
DROP INDEX orders_by_status;
