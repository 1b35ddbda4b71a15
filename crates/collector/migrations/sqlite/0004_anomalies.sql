-- Anomaly detection (src/anomalies/): detector state per series, the anomalies found,
-- the webhook outbox, and the lease that lets one collector replica judge at a time.

-- One row per series (a tenant and meter; meter '*' is the tenant's request count and
-- denied share). `last_bucket` is the start (unix seconds) of the last bucket judged;
-- `state_json` the serialised detector. The judge updates a row only where
-- last_bucket is still what it read (compare-and-set), so two judges never both
-- advance a series.
CREATE TABLE anomaly_series (
    tenant        TEXT    NOT NULL,
    meter         TEXT    NOT NULL,
    bucket_secs   INTEGER NOT NULL,
    last_bucket   INTEGER NOT NULL,
    state_json    TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, meter)
) WITHOUT ROWID;

-- One row per alert. `id` is derived from (tenant, meter, kind, bucket, bucket_secs),
-- so judging the same bucket again (a restart, a second replica) finds the row there.
CREATE TABLE anomalies (
    aid            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    tenant         TEXT    NOT NULL,
    meter          TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    bucket         INTEGER NOT NULL,
    bucket_secs    INTEGER NOT NULL,
    episode_start  INTEGER NOT NULL,
    score          REAL    NOT NULL,
    expected       REAL    NOT NULL,
    observed       REAL    NOT NULL,
    detected_at_ms INTEGER NOT NULL
);
CREATE INDEX anomalies_tenant ON anomalies (tenant, aid);
CREATE INDEX anomalies_bucket ON anomalies (bucket);

-- CloudEvents waiting for (or done with) the webhook: written in the same transaction
-- as the anomaly, deleted never, marked delivered only after a 2xx.
CREATE TABLE anomaly_outbox (
    id              TEXT    NOT NULL PRIMARY KEY,
    payload         TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    last_error      TEXT
);
CREATE INDEX anomaly_outbox_due ON anomaly_outbox (delivered_at_ms, next_attempt_ms);

-- Who judges: one row, taken by a replica whose lease expired or is its own.
-- `scanned_seq` is the ledger change sequence up to which new series were looked for.
CREATE TABLE anomaly_lease (
    one         INTEGER PRIMARY KEY CHECK (one = 1),
    holder      TEXT    NOT NULL,
    until_ms    INTEGER NOT NULL,
    scanned_seq INTEGER NOT NULL
);
INSERT INTO anomaly_lease (one, holder, until_ms, scanned_seq) VALUES (1, '', 0, 0);

-- The judge aggregates every tenant's rows by time; the console's ingest figures count
-- rows by arrival.
CREATE INDEX usage_events_time ON usage_events (time_ms, tenant, decision);
CREATE INDEX usage_events_received ON usage_events (received_at_ms);
