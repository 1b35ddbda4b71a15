-- usage_meters keyed by (seq, meter), the change sequence of its usage_events row,
-- instead of (id, meter): its rows append and its primary key carries 8 bytes instead
-- of the 48-character consume id. A row that changes takes a new seq, and its meters
-- are written again under it. (SQLite's 0006 also makes seq the rowid of usage_events;
-- PostgreSQL's tables are heaps, so usage_events keeps its schema here.)
--
-- The table is rebuilt rather than updated in place: an UPDATE of every row would
-- leave as many dead versions behind, and the indexes are faster built once, after
-- the copy. It runs in one transaction, at the first start of a collector that has it:
-- back the ledger up first (docs/operate.md).
CREATE TABLE usage_meters_v3 (
    seq      BIGINT  NOT NULL,
    meter    TEXT    COLLATE "C" NOT NULL,
    quantity BIGINT  NOT NULL,
    tenant   TEXT    COLLATE "C" NOT NULL,
    time_ms  BIGINT  NOT NULL,
    billable BOOLEAN NOT NULL
);

-- Meters of no ledger row (none are written so) would count in no listing but in the
-- totals: the join leaves them out.
INSERT INTO usage_meters_v3 (seq, meter, quantity, tenant, time_ms, billable)
SELECT e.seq, m.meter, m.quantity, m.tenant, m.time_ms, m.billable
FROM usage_meters m JOIN usage_events e ON e.id = m.id
ORDER BY e.seq, m.meter;

DROP TABLE usage_meters;
ALTER TABLE usage_meters_v3 RENAME TO usage_meters;
ALTER TABLE usage_meters ADD PRIMARY KEY (seq, meter);
CREATE INDEX usage_meters_aggregate ON usage_meters (tenant, billable, time_ms, meter, quantity);
CREATE INDEX usage_meters_time ON usage_meters (billable, time_ms, tenant, meter, quantity);
