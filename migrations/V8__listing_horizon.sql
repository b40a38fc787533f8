-- Every item of a listing exactly once, even one whose transaction commits late (issue 12).
-- Lists are keyed on a time the database gives each row: the transaction start (`now()`)
-- of the transaction that wrote it. A transaction still running started at or after the
-- oldest running one, so every row it may still commit has a key at or above that start:
-- below it, nothing can appear any more, and a page that reads only below it never skips a
-- row that shows up later. The functions share one database role, so each sees the others'
-- sessions here; the horizon counts this database's client sessions only.
CREATE FUNCTION listing_horizon() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT least(now(), coalesce(min(xact_start), now()))
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND backend_type = 'client backend'
      AND xact_start IS NOT NULL
      AND pid <> pg_backend_pid()
$$;

-- Products list on (created_at, id), and a product's ledger on (at, seq).
CREATE INDEX products_by_created ON products (created_at, id);
CREATE INDEX inventory_ledger_by_product_at ON inventory_ledger (product_id, at, seq);
DROP INDEX inventory_ledger_by_product_seq;
