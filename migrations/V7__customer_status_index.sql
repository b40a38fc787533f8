-- A customer's orders of one status (GET /orders?status= by a customer, or staff's
-- customerId + status): on the customer's index alone, a rare status in a large account
-- read the whole account to fill a page (10,001 rows for 31, 314 ms from disk in the bench).
CREATE INDEX orders_by_customer_status_created ON orders (customer_id, status, created_at, id)
    WHERE customer_id IS NOT NULL;
