-- The ledger's rows, and their meters, keyed by their change sequence.
--
-- usage_events was a WITHOUT ROWID table keyed on the 48-character consume id, so each
-- of its five indexes carried that id in every entry, and every new row went into the
-- middle of the table's B-tree. Here `seq` is the rowid: new and updated rows append
-- at the end of the table, the indexes carry 8 bytes for the row instead of the id,
-- `seq` ranges (changes, billing, anomalies) read the table itself, and the
-- (tenant) index is ordered by seq for free, so the separate seq index goes. The id
-- keeps a UNIQUE index: it is what facts are merged on. usage_meters is keyed by
-- (seq, meter) instead of (id, meter) for the same reasons: its rows append, and its
-- two covering indexes carry 8 bytes for the row instead of the id. A row that changes
-- takes a new seq, and its meters are written again under it.
--
-- It rewrites both tables once, at the first start of a collector that has it (about 7 µs
-- per row), in one transaction: back the ledger up first (docs/operate.md). The file
-- keeps its size; new rows reuse the pages the old table freed. PostgreSQL's tables are
-- heaps already: there usage_meters alone changes key (its 0006).
CREATE TABLE usage_events_v3 (
    id             TEXT    NOT NULL UNIQUE,
    source         TEXT    NOT NULL,
    tenant         TEXT    NOT NULL,
    time_ms        INTEGER NOT NULL,
    plan           TEXT,
    method         TEXT    NOT NULL,
    route          TEXT    NOT NULL,
    status         INTEGER NOT NULL,
    request_bytes  INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    decision       TEXT    NOT NULL
        CHECK (decision IN ('allowed', 'denied', 'unverified', 'cancelled', 'leased')),
    billable       BOOLEAN NOT NULL,
    meters         TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    counted        BOOLEAN NOT NULL,
    reported       BOOLEAN NOT NULL,
    refunded       BOOLEAN NOT NULL,
    lease          TEXT,
    -- Always bound by the collector: a NULL here would make SQLite pick a rowid.
    seq            INTEGER PRIMARY KEY,
    settled        INTEGER NOT NULL DEFAULT 0
);

INSERT INTO usage_events_v3 (id, source, tenant, time_ms, plan, method, route, status,
    request_bytes, response_bytes, duration_ms, decision, billable, meters, received_at_ms,
    counted, reported, refunded, lease, seq, settled)
SELECT id, source, tenant, time_ms, plan, method, route, status,
    request_bytes, response_bytes, duration_ms, decision, billable, meters, received_at_ms,
    counted, reported, refunded, lease, seq, settled
FROM usage_events ORDER BY seq;

DROP TABLE usage_events;
ALTER TABLE usage_events_v3 RENAME TO usage_events;

-- An index on (tenant) ends in the rowid, i.e. seq: `tenant = ? AND seq > ? ORDER BY
-- seq` is one range of it, as with the (tenant, seq) index it replaces.
CREATE INDEX usage_events_tenant_seq ON usage_events (tenant);
CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time_ms);
CREATE INDEX usage_events_time ON usage_events (time_ms, tenant, decision);
CREATE INDEX usage_events_received ON usage_events (received_at_ms);

-- Dropping the old table dropped its trigger (0003_billing.sql): the same again.
CREATE TRIGGER usage_events_billing_move AFTER UPDATE ON usage_events
WHEN OLD.billable AND (OLD.tenant <> NEW.tenant OR OLD.time_ms / 3600000 <> NEW.time_ms / 3600000)
BEGIN
    INSERT INTO billing_moves (seq, tenant, time_ms) VALUES (NEW.seq, OLD.tenant, OLD.time_ms);
END;

CREATE TABLE usage_meters_v3 (
    seq      INTEGER NOT NULL,
    meter    TEXT    NOT NULL,
    quantity INTEGER NOT NULL,
    tenant   TEXT    NOT NULL,
    time_ms  INTEGER NOT NULL,
    billable BOOLEAN NOT NULL,
    PRIMARY KEY (seq, meter)
) WITHOUT ROWID;

INSERT INTO usage_meters_v3 (seq, meter, quantity, tenant, time_ms, billable)
SELECT e.seq, m.meter, m.quantity, m.tenant, m.time_ms, m.billable
FROM usage_meters m JOIN usage_events e ON e.id = m.id
ORDER BY e.seq, m.meter;

DROP TABLE usage_meters;
ALTER TABLE usage_meters_v3 RENAME TO usage_meters;

CREATE INDEX usage_meters_aggregate ON usage_meters (tenant, billable, time_ms, meter, quantity);
CREATE INDEX usage_meters_time ON usage_meters (billable, time_ms, tenant, meter, quantity);
