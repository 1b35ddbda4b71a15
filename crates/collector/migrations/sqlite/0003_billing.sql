-- Billing sync: what Turnpike has told Stripe, kept next to the ledger so that a
-- crash at any point neither loses nor repeats a meter event.
--
-- The sync folds ledger changes (usage_events.seq after billing_sync.cursor_seq)
-- into per tenant, meter and hour totals (billing_hours.ledger_quantity), then makes
-- Stripe hold the same: every meter event is written here as an intent (identifier,
-- quantity) and committed BEFORE it is sent, and marked delivered after. An intent
-- found on restart is sent again under the same identifier, which Stripe refuses as
-- a duplicate if the first attempt landed.

-- One row: how far the ledger has been folded, who is syncing, how the last run went.
CREATE TABLE billing_sync (
    one               INTEGER PRIMARY KEY CHECK (one = 1),
    cursor_seq        INTEGER NOT NULL,
    lease_owner       TEXT,
    lease_until_ms    INTEGER NOT NULL,
    last_run_ms       INTEGER,
    last_success_ms   INTEGER,
    last_error        TEXT,
    last_reconcile_ms INTEGER
);
INSERT INTO billing_sync (one, cursor_seq, lease_until_ms) VALUES (1, 0, 0);

-- Per tenant, meter and hour: the ledger's billable quantity and what Stripe holds.
-- Stripe should hold ledger_quantity + credited_quantity: units a refund took back
-- after Stripe could no longer cancel are credits to issue (billing_credits).
CREATE TABLE billing_hours (
    tenant            TEXT    NOT NULL,
    meter             TEXT    NOT NULL,
    hour_start_ms     INTEGER NOT NULL,
    ledger_quantity   INTEGER NOT NULL,
    -- Sum of this hour's events Stripe holds (delivered, not cancelled).
    sent_quantity     INTEGER NOT NULL DEFAULT 0,
    credited_quantity INTEGER NOT NULL DEFAULT 0,
    -- Last meter event revision allocated (identifiers end in it).
    revision          INTEGER NOT NULL DEFAULT 0,
    -- Bumped by every change of this hour's sync state: writers compare and set it.
    version           INTEGER NOT NULL DEFAULT 0,
    status            TEXT    NOT NULL
        CHECK (status IN ('open', 'pending', 'synced', 'unmapped', 'no_meter', 'expired', 'error')),
    -- Stripe refused the hour's timestamp as outside its 35-day window.
    too_old           BOOLEAN NOT NULL DEFAULT FALSE,
    last_error        TEXT,
    next_attempt_ms   INTEGER NOT NULL DEFAULT 0,
    updated_ms        INTEGER NOT NULL,
    PRIMARY KEY (tenant, meter, hour_start_ms)
) WITHOUT ROWID;
CREATE INDEX billing_hours_status ON billing_hours (status, hour_start_ms);
CREATE INDEX billing_hours_time ON billing_hours (hour_start_ms, tenant);

-- Every meter event Turnpike decided to send, before it was sent.
CREATE TABLE billing_events (
    identifier    TEXT    NOT NULL PRIMARY KEY,
    tenant        TEXT    NOT NULL,
    meter         TEXT    NOT NULL,
    hour_start_ms INTEGER NOT NULL,
    revision      INTEGER NOT NULL,
    event_name    TEXT    NOT NULL,
    customer      TEXT    NOT NULL,
    quantity      INTEGER NOT NULL,
    timestamp_s   INTEGER NOT NULL,
    status        TEXT    NOT NULL
        CHECK (status IN ('intent', 'delivered', 'final', 'cancel_intent', 'cancelled',
                          'rejected', 'abandoned')),
    created_ms    INTEGER NOT NULL,
    delivered_ms  INTEGER,
    cancelled_ms  INTEGER,
    error         TEXT,
    UNIQUE (tenant, meter, hour_start_ms, revision)
);
CREATE INDEX billing_events_hour ON billing_events (tenant, meter, hour_start_ms);

-- Units Stripe billed that the ledger took back too late to cancel: the operator
-- issues them as credits (a credit note or a customer balance transaction).
CREATE TABLE billing_credits (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT    NOT NULL,
    meter         TEXT    NOT NULL,
    hour_start_ms INTEGER NOT NULL,
    customer      TEXT,
    event_name    TEXT    NOT NULL,
    quantity      INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL,
    resolved_ms   INTEGER,
    note          TEXT
);

-- The tenant -> Stripe customer mapping the last sync used (from the plans file).
CREATE TABLE billing_customers (
    tenant   TEXT NOT NULL PRIMARY KEY,
    customer TEXT NOT NULL
) WITHOUT ROWID;

-- The last reconciliation with Stripe, per customer, event name and billing period.
CREATE TABLE billing_drift (
    customer          TEXT    NOT NULL,
    event_name        TEXT    NOT NULL,
    period_start_ms   INTEGER NOT NULL,
    period_end_ms     INTEGER NOT NULL,
    ledger_quantity   INTEGER NOT NULL,
    sent_quantity     INTEGER NOT NULL,
    credited_quantity INTEGER NOT NULL,
    stripe_quantity   INTEGER,
    checked_ms        INTEGER NOT NULL,
    PRIMARY KEY (customer, event_name, period_start_ms)
) WITHOUT ROWID;

-- A billable row that moved to another tenant or hour (the counter's record settled
-- its time after the proxy's) leaves its old hour short: the change sequence only
-- shows the row where it is now, so the old place is recorded here, at the same seq.
CREATE TABLE billing_moves (
    seq     INTEGER NOT NULL,
    tenant  TEXT    NOT NULL,
    time_ms INTEGER NOT NULL
);
CREATE INDEX billing_moves_seq ON billing_moves (seq);

CREATE TRIGGER usage_events_billing_move AFTER UPDATE ON usage_events
WHEN OLD.billable AND (OLD.tenant <> NEW.tenant OR OLD.time_ms / 3600000 <> NEW.time_ms / 3600000)
BEGIN
    INSERT INTO billing_moves (seq, tenant, time_ms) VALUES (NEW.seq, OLD.tenant, OLD.time_ms);
END;
