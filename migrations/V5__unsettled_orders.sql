-- Lost events are recovered (API.md, Messages; INVARIANTS.md 12): the relay's run announces
-- again an order that stays `pending`, or whose requested stock effect is still not
-- applied, for longer than a few minutes. `announced_at` is when it last did, so an order is
-- announced once per period, not on every run.
ALTER TABLE orders ADD COLUMN announced_at timestamptz;
CREATE INDEX orders_unsettled ON orders ((coalesce(announced_at, updated_at)))
    WHERE status = 'pending' OR (stock = 'reserved' AND status IN ('shipped', 'delivered', 'cancelled'));
