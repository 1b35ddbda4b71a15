-- usage_meters keyed by (seq, meter), the change sequence of its usage_events row,
-- instead of (id, meter): its rows append and its primary key carries 8 bytes instead
-- of the 48-character consume id. A row that changes takes a new seq, and its meters
-- are written again under it. (SQLite's 0006 also makes seq the rowid of usage_events;
-- PostgreSQL's tables are heaps, so usage_events keeps its schema here.)
--
-- It rewrites usage_meters once, in one transaction, at the first start of a collector
-- that has it: back the ledger up first (docs/operate.md).
ALTER TABLE usage_meters ADD COLUMN seq BIGINT;
UPDATE usage_meters m SET seq = e.seq FROM usage_events e WHERE e.id = m.id;
-- Meters of no ledger row (none are written so) would count in no listing but in the
-- totals: they go.
DELETE FROM usage_meters WHERE seq IS NULL;
ALTER TABLE usage_meters ALTER COLUMN seq SET NOT NULL;
-- Drops the (id, meter) primary key with it.
ALTER TABLE usage_meters DROP COLUMN id;
ALTER TABLE usage_meters ADD PRIMARY KEY (seq, meter);
