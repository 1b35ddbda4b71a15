-- Ledger v2: one row per consume id, whatever told us about it first.
--
-- The counter's usage stream is the record of what was admitted (id, tenant, time,
-- meters, refunds); the proxy's usage events add what only the proxy knows (route,
-- status, bytes, duration) and carry the requests the counter never saw (denied,
-- fail_open, leased). Both describe the same consume id, so the row is keyed on the
-- id alone and each fact is merged into it.
--
-- `seq` is a change sequence: every insert or update of a row takes the next value,
-- in commit order (writers serialise on ledger_seq), so a reader that remembers the
-- highest seq it saw misses nothing, late events and refunds included.
CREATE TABLE ledger_seq (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    next INTEGER NOT NULL
);
INSERT INTO ledger_seq (one, next) VALUES (1, 1);

CREATE TABLE usage_events_v2 (
    id             TEXT    NOT NULL PRIMARY KEY,
    source         TEXT    NOT NULL,
    tenant         TEXT    NOT NULL,
    time_ms        INTEGER NOT NULL,
    plan           TEXT,
    method         TEXT    NOT NULL,
    route          TEXT    NOT NULL,
    -- 0 until the proxy's event says what the client got.
    status         INTEGER NOT NULL,
    request_bytes  INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    decision       TEXT    NOT NULL
        CHECK (decision IN ('allowed', 'denied', 'unverified', 'cancelled', 'leased')),
    billable       BOOLEAN NOT NULL,
    meters         TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    -- The counter's usage stream holds this consume (it was admitted by Redis).
    counted        BOOLEAN NOT NULL,
    -- A proxy's usage event for it arrived.
    reported       BOOLEAN NOT NULL,
    refunded       BOOLEAN NOT NULL,
    lease          TEXT,
    seq            INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO usage_events_v2 (id, source, tenant, time_ms, plan, method, route, status,
    request_bytes, response_bytes, duration_ms, decision, billable, meters, received_at_ms,
    counted, reported, refunded, lease, seq)
SELECT id, MIN(source), tenant, time_ms, plan, method, route, status, request_bytes,
    response_bytes, duration_ms, decision, billable, meters, received_at_ms,
    0, 1, 0, NULL, 0
FROM usage_events GROUP BY id;

CREATE TABLE usage_meters_v2 (
    id       TEXT    NOT NULL,
    meter    TEXT    NOT NULL,
    quantity INTEGER NOT NULL,
    tenant   TEXT    NOT NULL,
    time_ms  INTEGER NOT NULL,
    billable BOOLEAN NOT NULL,
    PRIMARY KEY (id, meter)
) WITHOUT ROWID;

INSERT INTO usage_meters_v2 (id, meter, quantity, tenant, time_ms, billable)
SELECT m.id, m.meter, m.quantity, m.tenant, m.time_ms, m.billable
FROM usage_meters m JOIN usage_events_v2 e ON e.id = m.id AND e.source = m.source;

DROP TABLE usage_meters;
DROP TABLE usage_events;
ALTER TABLE usage_events_v2 RENAME TO usage_events;
ALTER TABLE usage_meters_v2 RENAME TO usage_meters;

-- Existing rows get seqs in their old listing order.
UPDATE usage_events SET seq = o.n
FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY time_ms, id) AS n FROM usage_events) AS o
WHERE usage_events.id = o.id;
UPDATE ledger_seq SET next = (SELECT COALESCE(MAX(seq), 0) + 1 FROM usage_events);

CREATE INDEX usage_events_seq ON usage_events (seq);
CREATE INDEX usage_events_tenant_seq ON usage_events (tenant, seq);
CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time_ms);
CREATE INDEX usage_meters_aggregate ON usage_meters (tenant, billable, time_ms, meter, quantity);
CREATE INDEX usage_meters_time ON usage_meters (billable, time_ms, tenant, meter, quantity);

-- Events the collector could not take (bad fields, unknown shape): kept aside with
-- the reason, so one bad event never costs its neighbours and nothing vanishes.
CREATE TABLE quarantine (
    qid            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at_ms INTEGER NOT NULL,
    origin         TEXT    NOT NULL,
    field          TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    raw            TEXT    NOT NULL
);
