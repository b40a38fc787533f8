-- Sessions may be multiplexed (RDS Proxy, PgBouncer in transaction mode), so nothing may
-- rely on session state such as an advisory lock. A creation with an idempotency key now
-- claims the key by inserting its row first, which makes a concurrent duplicate wait on it;
-- the order it names is written later in the same transaction, so the reference is checked
-- at commit.
ALTER TABLE idempotency_keys
    ALTER CONSTRAINT idempotency_keys_order_id_fkey DEFERRABLE INITIALLY DEFERRED;
