//! The anomaly tables and the ledger aggregates the judge reads. Same SQL text for
//! SQLite and PostgreSQL, as in [`crate::ledger`].

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row as _};
use turnpike_anomaly::Kind;

use super::series::{Detected, LedgerBucket, SeriesKey, SeriesState, REQUESTS};
use crate::ledger::{with_pool, Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("this replica no longer holds the judging lease")]
    LostLease,
    #[error("series {tenant}/{meter} was judged by another replica meanwhile")]
    Conflict { tenant: String, meter: String },
    #[error("stored row unreadable: {0}")]
    Corrupt(String),
}

/// Which rows a query covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub meter: Option<String>,
}

/// A series and the time (ms) of its first row in the range asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstSeen {
    pub key: SeriesKey,
    pub first_ms: i64,
}

/// Every series with rows in `[since_ms, until_ms)`, with its first row's time, in
/// (tenant, meter) order: one pass over each aggregate index.
pub async fn series_between(
    ledger: &Ledger,
    filter: &Filter,
    since_ms: i64,
    until_ms: i64,
) -> Result<Vec<FirstSeen>, StoreError> {
    let mut out = Vec::new();
    let tenant = filter.tenant.as_deref().unwrap_or("");
    let meter = filter.meter.as_deref().unwrap_or("");
    if meter != REQUESTS {
        let sql = "SELECT tenant, meter, MIN(time_ms) FROM usage_meters \
                   WHERE billable = $1 AND time_ms >= $2 AND time_ms < $3 \
                   AND ($4 = '' OR tenant = $4) AND ($5 = '' OR meter = $5) \
                   GROUP BY tenant, meter";
        with_pool!(ledger, pool => {
            for r in sqlx::query(sql).bind(true).bind(since_ms).bind(until_ms).bind(tenant)
                .bind(meter).fetch_all(pool).await?
            {
                out.push(FirstSeen {
                    key: SeriesKey::new(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?),
                    first_ms: r.try_get(2)?,
                });
            }
        });
    }
    if meter.is_empty() || meter == REQUESTS {
        let sql = "SELECT tenant, MIN(time_ms) FROM usage_events \
                   WHERE time_ms >= $1 AND time_ms < $2 AND ($3 = '' OR tenant = $3) \
                   GROUP BY tenant";
        with_pool!(ledger, pool => {
            for r in sqlx::query(sql).bind(since_ms).bind(until_ms).bind(tenant)
                .fetch_all(pool).await?
            {
                out.push(FirstSeen {
                    key: SeriesKey::new(r.try_get::<String, _>(0)?, REQUESTS),
                    first_ms: r.try_get(1)?,
                });
            }
        });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// What ingest brought for one series since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub key: SeriesKey,
    /// Billing times of the earliest and latest of those rows.
    pub first_ms: i64,
    pub last_ms: i64,
    /// When the latest of them arrived.
    pub received_ms: i64,
}

/// Series with rows whose change sequence is in `(after_seq, upto_seq]`: what ingest
/// (backfill included) brought since the last look.
pub async fn series_changed(
    ledger: &Ledger,
    after_seq: i64,
    upto_seq: i64,
) -> Result<Vec<Changed>, StoreError> {
    let mut out = Vec::new();
    let meters = "SELECT m.tenant, m.meter, MIN(m.time_ms), MAX(m.time_ms), \
                  MAX(e.received_at_ms) FROM usage_events e \
                  JOIN usage_meters m ON m.seq = e.seq \
                  WHERE e.seq > $1 AND e.seq <= $2 AND m.billable = $3 \
                  GROUP BY m.tenant, m.meter";
    let tenants = "SELECT tenant, MIN(time_ms), MAX(time_ms), MAX(received_at_ms) \
                   FROM usage_events WHERE seq > $1 AND seq <= $2 GROUP BY tenant";
    with_pool!(ledger, pool => {
        for r in sqlx::query(meters).bind(after_seq).bind(upto_seq).bind(true)
            .fetch_all(pool).await?
        {
            out.push(Changed {
                key: SeriesKey::new(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?),
                first_ms: r.try_get(2)?,
                last_ms: r.try_get(3)?,
                received_ms: r.try_get(4)?,
            });
        }
        for r in sqlx::query(tenants).bind(after_seq).bind(upto_seq).fetch_all(pool).await? {
            out.push(Changed {
                key: SeriesKey::new(r.try_get::<String, _>(0)?, REQUESTS),
                first_ms: r.try_get(1)?,
                last_ms: r.try_get(2)?,
                received_ms: r.try_get(3)?,
            });
        }
    });
    Ok(out)
}

const METER_BUCKETS: &str = "SELECT tenant, meter, time_ms / $1 AS b, \
    CAST(SUM(quantity) AS BIGINT) FROM usage_meters \
    WHERE billable = $2 AND time_ms >= $3 AND time_ms < $4 \
    AND ($5 = '' OR tenant = $5) AND ($6 = '' OR meter = $6) \
    GROUP BY tenant, meter, b ORDER BY tenant, meter, b";

const REQUEST_BUCKETS: &str = "SELECT tenant, time_ms / $1 AS b, CAST(COUNT(*) AS BIGINT), \
    CAST(SUM(CASE WHEN decision = 'denied' THEN 1 ELSE 0 END) AS BIGINT) FROM usage_events \
    WHERE time_ms >= $2 AND time_ms < $3 AND ($4 = '' OR tenant = $4) \
    GROUP BY tenant, b ORDER BY tenant, b";

/// Non-empty buckets of `[from_ms, until_ms)` per series, in time order: one aggregate
/// query for the meters and one for the request series. With a tenant (and meter) in
/// `filter` the queries use the per-tenant index; without, the time index.
pub async fn buckets_between(
    ledger: &Ledger,
    filter: &Filter,
    from_ms: i64,
    until_ms: i64,
    bucket_secs: i64,
) -> Result<HashMap<SeriesKey, Vec<LedgerBucket>>, StoreError> {
    let width_ms = bucket_secs.max(1) * 1000;
    let tenant = filter.tenant.as_deref().unwrap_or("");
    let meter = filter.meter.as_deref().unwrap_or("");
    let mut out: HashMap<SeriesKey, Vec<LedgerBucket>> = HashMap::new();
    if meter != REQUESTS {
        with_pool!(ledger, pool => {
            for r in sqlx::query(METER_BUCKETS).bind(width_ms).bind(true).bind(from_ms)
                .bind(until_ms).bind(tenant).bind(meter).fetch_all(pool).await?
            {
                let key = SeriesKey::new(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?);
                let b: i64 = r.try_get(2)?;
                let quantity: i64 = r.try_get(3)?;
                out.entry(key).or_default().push(LedgerBucket {
                    start: b * bucket_secs,
                    value: quantity as f64,
                    total: 0.0,
                    denied: 0.0,
                });
            }
        });
    }
    if meter.is_empty() || meter == REQUESTS {
        with_pool!(ledger, pool => {
            for r in sqlx::query(REQUEST_BUCKETS).bind(width_ms).bind(from_ms).bind(until_ms)
                .bind(tenant).fetch_all(pool).await?
            {
                let key = SeriesKey::new(r.try_get::<String, _>(0)?, REQUESTS);
                let b: i64 = r.try_get(1)?;
                let total: i64 = r.try_get(2)?;
                let denied: i64 = r.try_get(3)?;
                out.entry(key).or_default().push(LedgerBucket {
                    start: b * bucket_secs,
                    value: total as f64,
                    total: total as f64,
                    denied: denied as f64,
                });
            }
        });
    }
    Ok(out)
}

/// One series' state as stored.
#[derive(Debug, Clone)]
pub struct StoredSeries {
    pub key: SeriesKey,
    pub last_bucket: i64,
    pub state: SeriesState,
}

/// Every stored series (with this bucket width; others are left alone).
pub async fn load_series(
    ledger: &Ledger,
    bucket_secs: i64,
) -> Result<Vec<StoredSeries>, StoreError> {
    let sql = "SELECT tenant, meter, last_bucket, state_json FROM anomaly_series \
               WHERE bucket_secs = $1";
    with_pool!(ledger, pool => {
        let rows = sqlx::query(sql).bind(bucket_secs).fetch_all(pool).await?;
        rows.iter()
            .map(|r| {
                let key = SeriesKey::new(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?);
                let json: String = r.try_get(3)?;
                let state: SeriesState = serde_json::from_str(&json).map_err(|e| {
                    StoreError::Corrupt(format!("anomaly_series {}/{}: {e}", key.tenant, key.meter))
                })?;
                Ok(StoredSeries { key, last_bucket: r.try_get(2)?, state })
            })
            .collect()
    })
}

/// Forget series judged with another bucket width (the flag changed): their states
/// cannot continue, and their rows would block the new ones. Rescans the ledger for
/// series from the start when any were forgotten. Returns how many.
pub async fn forget_other_widths(ledger: &Ledger, bucket_secs: i64) -> Result<u64, StoreError> {
    with_pool!(ledger, pool => {
        let mut tx = pool.begin().await?;
        let gone = sqlx::query("DELETE FROM anomaly_series WHERE bucket_secs <> $1")
            .bind(bucket_secs)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone > 0 {
            sqlx::query("UPDATE anomaly_lease SET scanned_seq = 0 WHERE one = 1")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone)
    })
}

/// How many series of this bucket width are stored, and the oldest `last_bucket`
/// among them.
pub async fn series_summary(
    ledger: &Ledger,
    bucket_secs: i64,
) -> Result<(i64, Option<i64>), StoreError> {
    let sql = "SELECT CAST(COUNT(*) AS BIGINT), MIN(last_bucket) FROM anomaly_series \
               WHERE bucket_secs = $1";
    with_pool!(ledger, pool => {
        let r = sqlx::query(sql).bind(bucket_secs).fetch_one(pool).await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    })
}

/// Take or renew the lease; returns whether `holder` holds it until `until_ms`.
pub async fn take_lease(
    ledger: &Ledger,
    holder: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<bool, StoreError> {
    let sql = "UPDATE anomaly_lease SET holder = $1, until_ms = $2 \
               WHERE one = 1 AND (holder = $1 OR until_ms < $3)";
    with_pool!(ledger, pool => {
        let done = sqlx::query(sql).bind(holder).bind(until_ms).bind(now_ms).execute(pool).await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Give the lease up (at shutdown), so another replica need not wait for it to expire.
pub async fn release_lease(ledger: &Ledger, holder: &str) -> Result<(), StoreError> {
    let sql = "UPDATE anomaly_lease SET until_ms = 0 WHERE one = 1 AND holder = $1";
    with_pool!(ledger, pool => {
        sqlx::query(sql).bind(holder).execute(pool).await?;
    });
    Ok(())
}

/// The lease row: holder, expiry and the change sequence scanned for new series.
pub async fn lease(ledger: &Ledger) -> Result<(String, i64, i64), StoreError> {
    let sql = "SELECT holder, until_ms, scanned_seq FROM anomaly_lease WHERE one = 1";
    with_pool!(ledger, pool => {
        let r = sqlx::query(sql).fetch_one(pool).await?;
        Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
    })
}

/// One series judged in a tick: its new state and where it stood before.
pub struct SeriesUpdate<'a> {
    pub key: &'a SeriesKey,
    /// `None` for a series new to the table.
    pub previous_last_bucket: Option<i64>,
    pub last_bucket: i64,
    pub state: &'a SeriesState,
}

/// An anomaly to store, with its CloudEvent when a webhook is configured.
pub struct NewAnomaly<'a> {
    pub detected: &'a Detected,
    pub cloud_event: Option<String>,
}

/// Who commits a round, when, and what it scanned.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    pub holder: &'a str,
    pub now_ms: i64,
    /// The lease is renewed to here.
    pub lease_until_ms: i64,
    /// Ledger change sequence scanned for new series.
    pub scanned_seq: i64,
    pub bucket_secs: i64,
}

/// Commit one tick in one transaction: fenced by the lease (the first statement fails
/// unless `holder` still holds it, and on PostgreSQL holds the lease row locked to the
/// commit), each series advanced only from where it was read (compare-and-set),
/// anomalies stored once (their ids are deterministic) and queued for the webhook in
/// the same commit. Returns the anomalies new to the table.
pub async fn commit_tick(
    ledger: &Ledger,
    round: &Round<'_>,
    series: &[SeriesUpdate<'_>],
    anomalies: &[NewAnomaly<'_>],
) -> Result<Vec<String>, StoreError> {
    let Round {
        holder,
        now_ms,
        lease_until_ms,
        scanned_seq,
        bucket_secs,
    } = *round;
    with_pool!(ledger, pool => {
        let mut tx = pool.begin().await?;
        let fenced = sqlx::query(
            "UPDATE anomaly_lease SET until_ms = $1, scanned_seq = $2 \
             WHERE one = 1 AND holder = $3 AND until_ms >= $4",
        )
        .bind(lease_until_ms)
        .bind(scanned_seq)
        .bind(holder)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if fenced.rows_affected() != 1 {
            return Err(StoreError::LostLease);
        }
        for s in series {
            let json = serde_json::to_string(s.state)
                .map_err(|e| StoreError::Corrupt(format!("serialising a detector: {e}")))?;
            let done = match s.previous_last_bucket {
                Some(previous) => {
                    sqlx::query(
                        "UPDATE anomaly_series SET last_bucket = $1, state_json = $2, \
                         bucket_secs = $3, updated_at_ms = $4 \
                         WHERE tenant = $5 AND meter = $6 AND last_bucket = $7",
                    )
                    .bind(s.last_bucket)
                    .bind(&json)
                    .bind(bucket_secs)
                    .bind(now_ms)
                    .bind(&s.key.tenant)
                    .bind(&s.key.meter)
                    .bind(previous)
                    .execute(&mut *tx)
                    .await?
                }
                None => {
                    sqlx::query(
                        "INSERT INTO anomaly_series (tenant, meter, bucket_secs, last_bucket, \
                         state_json, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (tenant, meter) DO NOTHING",
                    )
                    .bind(&s.key.tenant)
                    .bind(&s.key.meter)
                    .bind(bucket_secs)
                    .bind(s.last_bucket)
                    .bind(&json)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                }
            };
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict {
                    tenant: s.key.tenant.clone(),
                    meter: s.key.meter.clone(),
                });
            }
        }
        let mut new_ids = Vec::new();
        for a in anomalies {
            let d = a.detected;
            let inserted = sqlx::query(
                "INSERT INTO anomalies (id, tenant, meter, kind, bucket, bucket_secs, \
                 episode_start, score, expected, observed, detected_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&d.id)
            .bind(&d.tenant)
            .bind(&d.meter)
            .bind(d.kind.as_str())
            .bind(d.bucket)
            .bind(d.bucket_secs)
            .bind(d.episode_start)
            .bind(d.score)
            .bind(d.expected)
            .bind(d.observed)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                continue;
            }
            new_ids.push(d.id.clone());
            if let Some(payload) = &a.cloud_event {
                sqlx::query(
                    "INSERT INTO anomaly_outbox (id, payload, created_at_ms, attempts, \
                     next_attempt_ms) VALUES ($1, $2, $3, 0, $3) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&d.id)
                .bind(payload)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(new_ids)
    })
}

/// An anomaly as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnomaly {
    pub aid: i64,
    pub detected: Detected,
    pub detected_at_ms: i64,
}

/// What `GET /v1/anomalies` asks for.
#[derive(Debug, Clone, Default)]
pub struct AnomalyQuery {
    pub tenant: Option<String>,
    pub meter: Option<String>,
    pub kind: Option<Kind>,
    /// Bucket start range, unix seconds.
    pub since: i64,
    pub until: i64,
    /// Page after this `aid` (ascending) or before it (descending; 0: from the newest).
    pub after: i64,
    pub descending: bool,
    pub limit: u32,
}

/// A page of stored anomalies, in detection order (`aid`).
pub async fn list_anomalies(
    ledger: &Ledger,
    q: &AnomalyQuery,
) -> Result<Vec<StoredAnomaly>, StoreError> {
    let (cmp, order) = if q.descending {
        ("($6 = 0 OR aid < $6)", "DESC")
    } else {
        ("aid > $6", "ASC")
    };
    let sql = format!(
        "SELECT aid, id, tenant, meter, kind, bucket, bucket_secs, episode_start, score, \
         expected, observed, detected_at_ms FROM anomalies \
         WHERE ($1 = '' OR tenant = $1) AND ($2 = '' OR meter = $2) AND ($3 = '' OR kind = $3) \
         AND bucket >= $4 AND bucket < $5 AND {cmp} ORDER BY aid {order} LIMIT $7"
    );
    with_pool!(ledger, pool => {
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(q.tenant.as_deref().unwrap_or(""))
            .bind(q.meter.as_deref().unwrap_or(""))
            .bind(q.kind.map_or("", Kind::as_str))
            .bind(q.since)
            .bind(q.until)
            .bind(q.after)
            .bind(i64::from(q.limit))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(4)?;
                Ok(StoredAnomaly {
                    aid: r.try_get(0)?,
                    detected: Detected {
                        id: r.try_get(1)?,
                        tenant: r.try_get(2)?,
                        meter: r.try_get(3)?,
                        kind: Kind::parse(&kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("kind {kind:?}")))?,
                        bucket: r.try_get(5)?,
                        bucket_secs: r.try_get(6)?,
                        episode_start: r.try_get(7)?,
                        score: r.try_get(8)?,
                        expected: r.try_get(9)?,
                        observed: r.try_get(10)?,
                    },
                    detected_at_ms: r.try_get(11)?,
                })
            })
            .collect()
    })
}

/// An outbox row due for delivery.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: String,
    pub payload: String,
    pub attempts: i64,
}

/// Up to `limit` undelivered events due at `now_ms`, oldest first.
pub async fn outbox_due(
    ledger: &Ledger,
    now_ms: i64,
    limit: u32,
) -> Result<Vec<OutboxItem>, StoreError> {
    let sql = "SELECT id, payload, attempts FROM anomaly_outbox \
               WHERE delivered_at_ms IS NULL AND next_attempt_ms <= $1 \
               ORDER BY created_at_ms, id LIMIT $2";
    with_pool!(ledger, pool => {
        let rows = sqlx::query(sql).bind(now_ms).bind(i64::from(limit)).fetch_all(pool).await?;
        rows.iter()
            .map(|r| Ok(OutboxItem { id: r.try_get(0)?, payload: r.try_get(1)?, attempts: r.try_get(2)? }))
            .collect()
    })
}

/// Claim an event for one attempt: pushes its next attempt past `claim_until_ms`, so
/// no other replica sends it meanwhile. False if someone else claimed or delivered it.
pub async fn outbox_claim(
    ledger: &Ledger,
    id: &str,
    now_ms: i64,
    claim_until_ms: i64,
) -> Result<bool, StoreError> {
    let sql = "UPDATE anomaly_outbox SET next_attempt_ms = $1 \
               WHERE id = $2 AND delivered_at_ms IS NULL AND next_attempt_ms <= $3";
    with_pool!(ledger, pool => {
        let done = sqlx::query(sql).bind(claim_until_ms).bind(id).bind(now_ms).execute(pool).await?;
        Ok(done.rows_affected() == 1)
    })
}

pub async fn outbox_delivered(ledger: &Ledger, id: &str, now_ms: i64) -> Result<(), StoreError> {
    let sql = "UPDATE anomaly_outbox SET delivered_at_ms = $1, attempts = attempts + 1, \
               last_error = NULL WHERE id = $2";
    with_pool!(ledger, pool => {
        sqlx::query(sql).bind(now_ms).bind(id).execute(pool).await?;
    });
    Ok(())
}

pub async fn outbox_failed(
    ledger: &Ledger,
    id: &str,
    next_attempt_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    let sql = "UPDATE anomaly_outbox SET attempts = attempts + 1, next_attempt_ms = $1, \
               last_error = $2 WHERE id = $3 AND delivered_at_ms IS NULL";
    with_pool!(ledger, pool => {
        sqlx::query(sql).bind(next_attempt_ms).bind(error).bind(id).execute(pool).await?;
    });
    Ok(())
}

/// Undelivered events, and the creation time of the oldest.
pub async fn outbox_pending(ledger: &Ledger) -> Result<(i64, Option<i64>), StoreError> {
    let sql = "SELECT CAST(COUNT(*) AS BIGINT), MIN(created_at_ms) FROM anomaly_outbox \
               WHERE delivered_at_ms IS NULL";
    with_pool!(ledger, pool => {
        let r = sqlx::query(sql).fetch_one(pool).await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    })
}
