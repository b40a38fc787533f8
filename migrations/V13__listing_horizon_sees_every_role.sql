-- The listing horizon (V8) reads every session's transaction start, but PostgreSQL shows a
-- session's `xact_start` only to its own role and to roles that may read all statistics.
-- Functions connect as the application role (V10), which sees neither the owner's sessions
-- (migrate, an operator's fix-up) nor anyone else's: a row such a session commits late
-- would be skipped by a client paging past it. The function runs as its owner, who sees
-- them all (a superuser locally; on RDS the master user, whose rds_superuser role reads
-- every connection's state), and reads nothing else.
ALTER FUNCTION listing_horizon() SECURITY DEFINER SET search_path = pg_catalog;
