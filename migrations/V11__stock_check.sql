-- The relay's run proves that the stock adds up (INVARIANTS.md 6, issue 13): for the
-- products whose ledger changed since its last check, the ledger sums to the stored
-- `inventory` and `reserved`, and a product that does not is reported (`StockDrift`).

-- The stored figures per product, as the check reads them. A change of how stock is stored
-- (per-product buckets) redefines this view with CREATE OR REPLACE; the check stays as it is.
CREATE VIEW product_stock AS
    SELECT id AS product_id, inventory, reserved FROM products;

-- Where the check has got to, in one row: ledger rows with `seq <= checked_seq` are checked
-- for good. Sequence numbers are drawn in one order and committed in another, so the last
-- check also leaves a candidate: the highest number it saw, the first transaction id not
-- yet given out then, and the time. Once every transaction running at that moment has
-- ended, no row at or below the candidate can still appear, and the watermark moves there
-- (`shared/src/store/health.rs` has the argument).
CREATE TABLE stock_check (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    checked_seq   bigint NOT NULL DEFAULT 0,
    candidate_seq bigint,
    candidate_xid xid8,
    candidate_at  timestamptz,
    checked_at    timestamptz
);
INSERT INTO stock_check DEFAULT VALUES;
