-- Billing sync state. See the SQLite migration of the same name for the reasoning;
-- the schema is the same.
CREATE TABLE billing_sync (
    one               INTEGER PRIMARY KEY CHECK (one = 1),
    cursor_seq        BIGINT  NOT NULL,
    lease_owner       TEXT,
    lease_until_ms    BIGINT  NOT NULL,
    last_run_ms       BIGINT,
    last_success_ms   BIGINT,
    last_error        TEXT,
    last_reconcile_ms BIGINT
);
INSERT INTO billing_sync (one, cursor_seq, lease_until_ms) VALUES (1, 0, 0);

CREATE TABLE billing_hours (
    tenant            TEXT    COLLATE "C" NOT NULL,
    meter             TEXT    COLLATE "C" NOT NULL,
    hour_start_ms     BIGINT  NOT NULL,
    ledger_quantity   BIGINT  NOT NULL,
    sent_quantity     BIGINT  NOT NULL DEFAULT 0,
    credited_quantity BIGINT  NOT NULL DEFAULT 0,
    revision          BIGINT  NOT NULL DEFAULT 0,
    version           BIGINT  NOT NULL DEFAULT 0,
    status            TEXT    NOT NULL
        CHECK (status IN ('open', 'pending', 'synced', 'unmapped', 'no_meter', 'expired', 'error')),
    too_old           BOOLEAN NOT NULL DEFAULT FALSE,
    last_error        TEXT,
    next_attempt_ms   BIGINT  NOT NULL DEFAULT 0,
    updated_ms        BIGINT  NOT NULL,
    PRIMARY KEY (tenant, meter, hour_start_ms)
);
CREATE INDEX billing_hours_status ON billing_hours (status, hour_start_ms);
CREATE INDEX billing_hours_time ON billing_hours (hour_start_ms, tenant);

CREATE TABLE billing_events (
    identifier    TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    tenant        TEXT    COLLATE "C" NOT NULL,
    meter         TEXT    COLLATE "C" NOT NULL,
    hour_start_ms BIGINT  NOT NULL,
    revision      BIGINT  NOT NULL,
    event_name    TEXT    NOT NULL,
    customer      TEXT    NOT NULL,
    quantity      BIGINT  NOT NULL,
    timestamp_s   BIGINT  NOT NULL,
    status        TEXT    NOT NULL
        CHECK (status IN ('intent', 'delivered', 'final', 'cancel_intent', 'cancelled',
                          'rejected', 'abandoned')),
    created_ms    BIGINT  NOT NULL,
    delivered_ms  BIGINT,
    cancelled_ms  BIGINT,
    error         TEXT,
    UNIQUE (tenant, meter, hour_start_ms, revision)
);
CREATE INDEX billing_events_hour ON billing_events (tenant, meter, hour_start_ms);

CREATE TABLE billing_credits (
    id            BIGSERIAL PRIMARY KEY,
    tenant        TEXT   COLLATE "C" NOT NULL,
    meter         TEXT   COLLATE "C" NOT NULL,
    hour_start_ms BIGINT NOT NULL,
    customer      TEXT,
    event_name    TEXT   NOT NULL,
    quantity      BIGINT NOT NULL,
    reason        TEXT   NOT NULL,
    created_ms    BIGINT NOT NULL,
    resolved_ms   BIGINT,
    note          TEXT
);

CREATE TABLE billing_customers (
    tenant   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    customer TEXT NOT NULL
);

CREATE TABLE billing_drift (
    customer          TEXT   COLLATE "C" NOT NULL,
    event_name        TEXT   COLLATE "C" NOT NULL,
    period_start_ms   BIGINT NOT NULL,
    period_end_ms     BIGINT NOT NULL,
    ledger_quantity   BIGINT NOT NULL,
    sent_quantity     BIGINT NOT NULL,
    credited_quantity BIGINT NOT NULL,
    stripe_quantity   BIGINT,
    checked_ms        BIGINT NOT NULL,
    PRIMARY KEY (customer, event_name, period_start_ms)
);

CREATE TABLE billing_moves (
    seq     BIGINT NOT NULL,
    tenant  TEXT   COLLATE "C" NOT NULL,
    time_ms BIGINT NOT NULL
);
CREATE INDEX billing_moves_seq ON billing_moves (seq);

CREATE FUNCTION billing_record_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO billing_moves (seq, tenant, time_ms) VALUES (NEW.seq, OLD.tenant, OLD.time_ms);
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_events_billing_move AFTER UPDATE ON usage_events
FOR EACH ROW
WHEN (OLD.billable AND (OLD.tenant <> NEW.tenant OR OLD.time_ms / 3600000 <> NEW.time_ms / 3600000))
EXECUTE FUNCTION billing_record_move();
