-- Anomaly detection (src/anomalies/): detector state per series, the anomalies found,
-- the webhook outbox, and the lease that lets one collector replica judge at a time.

-- One row per series (a tenant and meter; meter '*' is the tenant's request count and
-- denied share). `last_bucket` is the start (unix seconds) of the last bucket judged;
-- `state_json` the serialised detector. The judge updates a row only where
-- last_bucket is still what it read (compare-and-set), so two judges never both
-- advance a series.
CREATE TABLE anomaly_series (
    tenant        TEXT    COLLATE "C" NOT NULL,
    meter         TEXT    COLLATE "C" NOT NULL,
    bucket_secs BIGINT NOT NULL,
    last_bucket BIGINT NOT NULL,
    state_json    TEXT    NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, meter)
);

-- One row per alert. `id` is derived from (tenant, meter, kind, bucket, bucket_secs),
-- so judging the same bucket again (a restart, a second replica) finds the row there.
CREATE TABLE anomalies (
    aid            BIGSERIAL PRIMARY KEY,
    id             TEXT    COLLATE "C" NOT NULL UNIQUE,
    tenant         TEXT    COLLATE "C" NOT NULL,
    meter          TEXT    COLLATE "C" NOT NULL,
    kind           TEXT    COLLATE "C" NOT NULL,
    bucket BIGINT NOT NULL,
    bucket_secs BIGINT NOT NULL,
    episode_start BIGINT NOT NULL,
    score          DOUBLE PRECISION NOT NULL,
    expected       DOUBLE PRECISION NOT NULL,
    observed       DOUBLE PRECISION NOT NULL,
    detected_at_ms BIGINT NOT NULL
);
CREATE INDEX anomalies_tenant ON anomalies (tenant, aid);
CREATE INDEX anomalies_bucket ON anomalies (bucket);

-- CloudEvents waiting for (or done with) the webhook: written in the same transaction
-- as the anomaly, deleted never, marked delivered only after a 2xx.
CREATE TABLE anomaly_outbox (
    id              TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    payload         TEXT    NOT NULL,
    created_at_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    last_error      TEXT
);
CREATE INDEX anomaly_outbox_due ON anomaly_outbox (delivered_at_ms, next_attempt_ms);

-- Who judges: one row, taken by a replica whose lease expired or is its own.
-- `scanned_seq` is the ledger change sequence up to which new series were looked for.
CREATE TABLE anomaly_lease (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    holder      TEXT    NOT NULL,
    until_ms BIGINT NOT NULL,
    scanned_seq BIGINT NOT NULL
);
INSERT INTO anomaly_lease (one, holder, until_ms, scanned_seq) VALUES (1, '', 0, 0);

-- The judge aggregates every tenant's rows by time; the console's ingest figures count
-- rows by arrival.
CREATE INDEX usage_events_time ON usage_events (time_ms, tenant, decision);
CREATE INDEX usage_events_received ON usage_events (received_at_ms);
