-- migration 5: the sends in flight are counted in the store (what PostgreSQL needs for a fleet,
-- kept the same here so both backends share one contract).
ALTER TABLE outbox ADD COLUMN leased_until REAL;  -- a sender holds it until then
CREATE INDEX outbox_leased ON outbox (subscription_pk) WHERE status = 'pending' AND leased_until IS NOT NULL;
