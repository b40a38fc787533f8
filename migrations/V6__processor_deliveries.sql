-- Poison batches (issue 12): a message that crashes `process-orders` or makes it time out
-- gets its whole batch redelivered by the event source mapping. A redelivered batch is
-- applied one message at a time, each counted here before it is tried and forgotten once
-- it went through, so the row left standing names the culprit; after a few deliveries it is
-- parked with its reason and the rest of the batch is applied.
CREATE TABLE processor_deliveries (
    message_id  text PRIMARY KEY,
    deliveries  integer NOT NULL,
    last_seen   timestamptz NOT NULL DEFAULT now()
);
