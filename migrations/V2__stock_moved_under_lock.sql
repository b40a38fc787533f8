-- Raised by the order placement statement when a line it judged reservable (on the row it
-- locked, the latest version) was not reserved because the statement's older snapshot showed
-- too little stock: stock was added between the snapshot and the lock. Raising undoes the
-- whole statement; the caller runs it again on a fresh snapshot. Its own SQLSTATE lets the
-- caller tell it from any other error.
CREATE FUNCTION stock_moved_under_lock() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stock changed between the snapshot and the row lock; place the order again'
        USING ERRCODE = 'OM001';
END
$$;
