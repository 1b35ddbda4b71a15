-- The usage ledger. One row per metered request, keyed on the CloudEvents (source, id)
-- so a retried batch can never bill twice. Times are unix milliseconds, UTC.
CREATE TABLE usage_events (
    source         TEXT    COLLATE "C" NOT NULL,
    id             TEXT    COLLATE "C" NOT NULL,
    tenant         TEXT    COLLATE "C" NOT NULL,
    time_ms        BIGINT  NOT NULL,
    plan           TEXT,
    method         TEXT    NOT NULL,
    route          TEXT    NOT NULL,
    status         INTEGER NOT NULL,
    request_bytes  BIGINT  NOT NULL,
    response_bytes BIGINT  NOT NULL,
    duration_ms    BIGINT  NOT NULL,
    decision       TEXT    NOT NULL CHECK (decision IN ('allowed', 'denied', 'unverified')),
    billable       BOOLEAN NOT NULL,
    -- The event's meters as JSON text, so a listing needs no join.
    meters         TEXT    NOT NULL,
    received_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (source, id)
);

-- Keyset paging of one tenant's events in time order. Key columns are COLLATE "C":
-- byte order like SQLite's, whatever locale the cluster was made with, and cheaper.
CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time_ms, source, id);

-- One row per (event, meter), with the event's tenant, time and billable flag copied
-- in: aggregation is then an index-only range scan, no join.
CREATE TABLE usage_meters (
    source   TEXT    COLLATE "C" NOT NULL,
    id       TEXT    COLLATE "C" NOT NULL,
    meter    TEXT    COLLATE "C" NOT NULL,
    quantity BIGINT  NOT NULL,
    tenant   TEXT    COLLATE "C" NOT NULL,
    time_ms  BIGINT  NOT NULL,
    billable BOOLEAN NOT NULL,
    PRIMARY KEY (source, id, meter),
    FOREIGN KEY (source, id) REFERENCES usage_events (source, id)
);

CREATE INDEX usage_meters_aggregate ON usage_meters (tenant, billable, time_ms) INCLUDE (meter, quantity);
