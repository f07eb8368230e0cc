-- Autovacuum for the hot tables (issue 14, item 5). Every broker message is inserted, updated
-- twice (consumed, done) and deleted at retention; every job row is updated two or three times
-- and its attempt row once. At the defaults (a vacuum after 20% of a table is dead) a table of a
-- million finished rows waits for 200,000 dead ones: the hot rows' pages and indexes bloat in
-- between. Here a vacuum starts after 1% (and at least 1,000 rows), is not throttled (these
-- vacuums are short and frequent), and statistics follow the churn.
ALTER TABLE dramatiq.queue SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
-- jobs and job_attempts also leave room in each page (fillfactor) so that an update of columns no
-- index covers (a job's logs, an attempt's end) stays in its page: a HOT update, no index write.
ALTER TABLE jobs SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0, fillfactor = 90
);
ALTER TABLE job_attempts SET (
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0, fillfactor = 80
);
