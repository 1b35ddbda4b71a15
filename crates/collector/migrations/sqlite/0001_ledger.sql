-- The usage ledger. One row per metered request, keyed on the CloudEvents (source, id)
-- so a retried batch can never bill twice. Times are unix milliseconds, UTC.
CREATE TABLE usage_events (
    source         TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    tenant         TEXT    NOT NULL,
    time_ms        INTEGER NOT NULL,
    plan           TEXT,
    method         TEXT    NOT NULL,
    route          TEXT    NOT NULL,
    status         INTEGER NOT NULL,
    request_bytes  INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    decision       TEXT    NOT NULL CHECK (decision IN ('allowed', 'denied', 'unverified')),
    billable       BOOLEAN NOT NULL,
    -- The event's meters as JSON, so a listing needs no join.
    meters         TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (source, id)
) WITHOUT ROWID;

-- Keyset paging of one tenant's events in time order.
CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time_ms, source, id);

-- One row per (event, meter), with the event's tenant, time and billable flag copied
-- in: aggregation is then a range scan of one covering index, no join.
CREATE TABLE usage_meters (
    source   TEXT    NOT NULL,
    id       TEXT    NOT NULL,
    meter    TEXT    NOT NULL,
    quantity INTEGER NOT NULL,
    tenant   TEXT    NOT NULL,
    time_ms  INTEGER NOT NULL,
    billable BOOLEAN NOT NULL,
    PRIMARY KEY (source, id, meter),
    FOREIGN KEY (source, id) REFERENCES usage_events (source, id)
) WITHOUT ROWID;

CREATE INDEX usage_meters_aggregate ON usage_meters (tenant, billable, time_ms, meter, quantity);
