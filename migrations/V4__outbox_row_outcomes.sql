-- The relay judges every outbox row on its own (issue 12): a row the broker refuses
-- (unroutable, nacked) stays for a later run with its failures counted and its last error,
-- and is not tried again before `next_attempt_at`, so it never holds back the rows behind it.
ALTER TABLE outbox
    ADD COLUMN publish_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN next_attempt_at timestamptz;
