-- Ledger v2: one row per consume id, whatever told us about it first. See the SQLite
-- migration of the same name for the reasoning; the schema is the same.
CREATE TABLE ledger_seq (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    next BIGINT  NOT NULL
);
INSERT INTO ledger_seq (one, next) VALUES (1, 1);

CREATE TABLE usage_events_v2 (
    id             TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    source         TEXT    COLLATE "C" NOT NULL,
    tenant         TEXT    COLLATE "C" NOT NULL,
    time_ms        BIGINT  NOT NULL,
    plan           TEXT,
    method         TEXT    NOT NULL,
    route          TEXT    NOT NULL,
    status         INTEGER NOT NULL,
    request_bytes  BIGINT  NOT NULL,
    response_bytes BIGINT  NOT NULL,
    duration_ms    BIGINT  NOT NULL,
    decision       TEXT    NOT NULL
        CHECK (decision IN ('allowed', 'denied', 'unverified', 'cancelled', 'leased')),
    billable       BOOLEAN NOT NULL,
    meters         TEXT    NOT NULL,
    received_at_ms BIGINT  NOT NULL,
    counted        BOOLEAN NOT NULL,
    reported       BOOLEAN NOT NULL,
    refunded       BOOLEAN NOT NULL,
    lease          TEXT,
    seq            BIGINT  NOT NULL
);

INSERT INTO usage_events_v2 (id, source, tenant, time_ms, plan, method, route, status,
    request_bytes, response_bytes, duration_ms, decision, billable, meters, received_at_ms,
    counted, reported, refunded, lease, seq)
SELECT DISTINCT ON (id) id, source, tenant, time_ms, plan, method, route, status,
    request_bytes, response_bytes, duration_ms, decision, billable, meters, received_at_ms,
    FALSE, TRUE, FALSE, NULL, 0
FROM usage_events ORDER BY id, source;

CREATE TABLE usage_meters_v2 (
    id       TEXT    COLLATE "C" NOT NULL,
    meter    TEXT    COLLATE "C" NOT NULL,
    quantity BIGINT  NOT NULL,
    tenant   TEXT    COLLATE "C" NOT NULL,
    time_ms  BIGINT  NOT NULL,
    billable BOOLEAN NOT NULL,
    PRIMARY KEY (id, meter)
);

INSERT INTO usage_meters_v2 (id, meter, quantity, tenant, time_ms, billable)
SELECT m.id, m.meter, m.quantity, m.tenant, m.time_ms, m.billable
FROM usage_meters m JOIN usage_events_v2 e ON e.id = m.id AND e.source = m.source;

DROP TABLE usage_meters;
DROP TABLE usage_events;
ALTER TABLE usage_events_v2 RENAME TO usage_events;
ALTER TABLE usage_meters_v2 RENAME TO usage_meters;

UPDATE usage_events u SET seq = o.n
FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY time_ms, id) AS n FROM usage_events) o
WHERE u.id = o.id;
UPDATE ledger_seq SET next = (SELECT COALESCE(MAX(seq), 0) + 1 FROM usage_events);

CREATE INDEX usage_events_seq ON usage_events (seq);
CREATE INDEX usage_events_tenant_seq ON usage_events (tenant, seq);
CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time_ms);
CREATE INDEX usage_meters_aggregate ON usage_meters (tenant, billable, time_ms, meter, quantity);
CREATE INDEX usage_meters_time ON usage_meters (billable, time_ms, tenant, meter, quantity);

CREATE TABLE quarantine (
    qid            BIGSERIAL PRIMARY KEY,
    received_at_ms BIGINT NOT NULL,
    origin         TEXT   NOT NULL,
    field          TEXT   NOT NULL,
    reason         TEXT   NOT NULL,
    raw            TEXT   NOT NULL
);
