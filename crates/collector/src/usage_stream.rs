//! Consumes the counter's usage streams (one per key bucket, `tp:{NNN}:log`) into the
//! ledger with a Redis consumer group: an entry is acknowledged only after the ledger
//! committed it, so a collector killed at any point loses nothing (its pending entries
//! are read again when it restarts, or claimed by another collector), and the ledger's
//! merge by consume id makes a second delivery change nothing. Acknowledged entries
//! are trimmed, so the streams hold only what the ledger does not have yet.
//!
//! The 256 streams are read with one command per stream: pipelined to a single Redis,
//! or, on a Redis Cluster, each sent to its slot's master, all in flight at once
//! (`RedisConn::query_each`): a cluster pipeline cannot span slots. A round reads the
//! streams that are due ([`PollSchedule`]): those that gave entries last time at once,
//! quiet ones ever less often. An entry read waits [`HOLD`] for the facts that follow
//! it (a settlement, a refund) before it is committed with them (`stream_round.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{Cmd, FromRedisValue, RedisError, Value};
use turnpike_plans::keys::all_stream_keys;
use turnpike_redis::{ConnectError, RedisConfig, RedisConn};

use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::stream_poll::PollSchedule;
use crate::stream_round::{Held, Round, HOLD};

/// The consumer group every collector joins.
pub const GROUP: &str = "turnpike-collector";
/// Facts read per stream per round, about: a stream whose entries carry lease reports
/// (many facts each) is read that many fewer entries at a time, so a round's size stays
/// bounded by facts, not entries.
const READ_COUNT: usize = 500;
/// First wait after a failed round; doubled while rounds fail, up to 5 s.
const ERROR_WAIT: Duration = Duration::from_millis(50);
/// Entries another collector read but did not acknowledge for this long are claimed.
const CLAIM_IDLE_MS: usize = 30_000;
const CLAIM_EVERY: Duration = Duration::from_secs(10);
/// A round that read every entry there was starts the next one no sooner than this
/// after its own start. Keeping up, a collector would otherwise commit whatever came
/// in during its last commit, a few entries at a time, and each round costs a
/// transaction, its fsync and a Redis read and acknowledgement whatever it carries.
/// Behind (a stream gave all it was asked for), rounds follow at once.
const GATHER: Duration = Duration::from_millis(25);
const TRIM_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The counter's Redis: one server or a cluster, its secret, the per-call timeout.
    pub redis: RedisConfig,
    /// This collector's name in the group: stable across restarts, so a restarted
    /// collector reads its own unacknowledged entries again at once.
    pub consumer: String,
}

pub struct UsageStream {
    conn: RedisConn,
    consumer: String,
    keys: Vec<String>,
    ledger: Ledger,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Entries to read per round from each stream (same order as `keys`).
    counts: Vec<usize>,
    /// When each stream is read next (same order).
    schedule: PollSchedule,
}

/// Entries to read next from a stream whose last read gave `entries` entries holding
/// `facts` facts: [`READ_COUNT`] facts' worth at that density (at least one entry).
/// A read that found nothing says nothing new: the count stays.
fn next_count(current: usize, entries: usize, facts: usize) -> usize {
    if entries == 0 {
        return current;
    }
    let per_entry = facts.div_ceil(entries).max(1);
    (READ_COUNT / per_entry).max(1)
}

/// What a stream not read yet is read at: as if its entries were full lease reports,
/// until a read shows what they hold.
const FIRST_COUNT: usize = READ_COUNT / turnpike_wire::LEASE_RECORDS_PER_STREAM_ENTRY;

impl UsageStream {
    pub async fn connect(
        config: &StreamConfig,
        ledger: Ledger,
        metrics: Arc<Metrics>,
    ) -> Result<UsageStream, ConnectError> {
        let conn = connect(config)?;
        let keys = all_stream_keys();
        Ok(UsageStream {
            conn,
            consumer: config.consumer.clone(),
            counts: vec![FIRST_COUNT; keys.len()],
            schedule: PollSchedule::new(keys.len(), Instant::now()),
            keys,
            ledger,
            metrics,
            timeout: config.redis.timeout,
        })
    }

    /// Run until the task is dropped. Errors (Redis away, ledger away) are logged at a
    /// bounded rate and retried; nothing is acknowledged that is not committed.
    pub async fn run(mut self) {
        let mut groups_ready = false;
        let mut own_pending = true;
        let mut last_claim = Instant::now();
        let mut last_trim = Instant::now();
        let mut last_log = Instant::now() - Duration::from_secs(60);
        let mut backoff = ERROR_WAIT;
        // Read, waiting for what follows them (stream_round.rs).
        let mut held = Held::default();
        loop {
            let started = Instant::now();
            let result = async {
                if !groups_ready {
                    self.ensure_groups().await?;
                    groups_ready = true;
                }
                // After a restart, first what this consumer read but never acknowledged.
                let mut recovering = own_pending;
                let mut round = if own_pending {
                    self.read("0").await?
                } else {
                    self.read(">").await?
                };
                if own_pending && round.is_empty() {
                    own_pending = false;
                    recovering = false;
                    round = self.read(">").await?;
                }
                if last_claim.elapsed() >= CLAIM_EVERY {
                    last_claim = Instant::now();
                    round.extend(self.claim().await?);
                }
                let read_any = !round.is_empty();
                let full = round.full;
                let last = round.take_final();
                held.hold(round);
                // Read again from this consumer's pending list, entries are not held:
                // the next read of that list would return them again.
                let mut now = if recovering {
                    held.take_all()
                } else {
                    held.take_due(Instant::now(), HOLD)
                };
                now.extend(last);
                if !now.is_empty() {
                    if let Err(err) = self.commit(&now).await {
                        // Nothing of it was acknowledged: all of it again, first.
                        let mut again = now;
                        again.extend(held.take_all());
                        held.hold(again);
                        return Err(err);
                    }
                }
                let busy = read_any || !now.is_empty() || !held.is_empty();
                if last_trim.elapsed() >= TRIM_EVERY {
                    last_trim = Instant::now();
                    self.trim().await?;
                }
                Ok::<(bool, bool), StreamError>((busy, full))
            }
            .await;
            match result {
                Ok((busy, full)) => {
                    backoff = ERROR_WAIT;
                    if busy && !full {
                        tokio::time::sleep_until((started + GATHER).into()).await;
                    }
                    if !busy {
                        let next = self.schedule.next_due(Instant::now());
                        tokio::time::sleep_until(next.into()).await;
                    }
                }
                Err(err) => {
                    self.metrics.stream_error();
                    if matches!(&err, StreamError::Redis(e) if e.to_string().contains("NOGROUP")) {
                        // Redis lost its data (restart, failover): make the groups again.
                        groups_ready = false;
                    }
                    if last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = Instant::now();
                        tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64,
                            "usage stream: round failed; nothing acknowledged, retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StreamError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StreamError::Timeout(self.timeout)),
        }
    }

    /// Create the group on every stream (and the stream itself), reading from the start.
    async fn ensure_groups(&mut self) -> Result<(), StreamError> {
        let create = |key: &str| {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(key)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM");
            cmd
        };
        let cmds: Vec<Cmd> = self.keys.iter().map(|k| create(k)).collect();
        let mut conn = self.conn.clone();
        // BUSYGROUP (the group exists) fails the whole batch; then create them one by
        // one, accepting BUSYGROUP.
        if self.bounded(conn.query_each(&cmds)).await.is_err() {
            for cmd in &cmds {
                let created: Result<(), StreamError> =
                    self.bounded(cmd.query_async(&mut conn)).await;
                match created {
                    Ok(()) => {}
                    Err(StreamError::Redis(e)) if e.to_string().contains("BUSYGROUP") => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// One XREADGROUP per stream, pipelined: `>` for new entries from the streams that
    /// are due, `0` for this consumer's pending ones in every stream.
    async fn read(&mut self, from: &str) -> Result<Round, StreamError> {
        let now = Instant::now();
        let streams = if from == ">" {
            self.schedule.due(now)
        } else {
            (0..self.keys.len()).collect()
        };
        let cmds: Vec<Cmd> = streams
            .iter()
            .map(|&i| {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(self.counts[i])
                    .arg("STREAMS")
                    .arg(&self.keys[i])
                    .arg(from);
                cmd
            })
            .collect();
        let mut round = Round::default();
        if cmds.is_empty() {
            return Ok(round);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Option<StreamReadReply>> =
            parse_all(self.bounded(conn.query_each(&cmds)).await?)?;
        for (&i, reply) in streams.iter().zip(replies) {
            let (mut entries, mut facts) = (0, 0);
            for stream in reply.into_iter().flat_map(|r| r.keys) {
                for entry in &stream.ids {
                    entries += 1;
                    facts += round.add(&stream.key, entry, now);
                }
            }
            round.full |= entries > 0 && entries >= self.counts[i];
            self.counts[i] = next_count(self.counts[i], entries, facts);
            if from == ">" {
                self.schedule.read(i, entries, now);
            }
        }
        Ok(round)
    }

    /// Take over entries another collector read and never acknowledged (it died).
    async fn claim(&mut self) -> Result<Round, StreamError> {
        let cmds: Vec<Cmd> = self
            .keys
            .iter()
            .zip(&self.counts)
            .map(|(key, count)| {
                let mut cmd = redis::cmd("XAUTOCLAIM");
                cmd.arg(key)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(CLAIM_IDLE_MS)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(*count);
                cmd
            })
            .collect();
        let mut conn = self.conn.clone();
        let replies: Vec<StreamAutoClaimReply> =
            parse_all(self.bounded(conn.query_each(&cmds)).await?)?;
        let mut round = Round::default();
        let now = Instant::now();
        for ((key, count), reply) in self.keys.iter().zip(self.counts.iter_mut()).zip(replies) {
            let mut facts = 0;
            for entry in &reply.claimed {
                facts += round.add(key, entry, now);
            }
            *count = next_count(*count, reply.claimed.len(), facts);
        }
        if !round.is_empty() {
            tracing::info!(
                entries = round.entries.len(),
                "usage stream: claimed entries another collector left unacknowledged"
            );
        }
        Ok(round)
    }

    /// Commit to the ledger, then acknowledge. A crash in between re-delivers the
    /// entries, and the ledger's merge makes the second delivery change nothing.
    async fn commit(&mut self, round: &Round) -> Result<(), StreamError> {
        let now = crate::api::now_ms();
        let facts = round.facts();
        let applied = self
            .ledger
            .apply(&facts, now)
            .await
            .map_err(StreamError::Ledger)?;
        let bad = round.bad();
        if !bad.is_empty() {
            tracing::warn!(
                entries = bad.len(),
                "usage stream: malformed entries quarantined"
            );
            self.ledger
                .quarantine("usage-stream", &bad, now)
                .await
                .map_err(StreamError::Ledger)?;
            self.metrics.quarantined("stream", bad.len() as u64);
        }
        self.metrics.stream_applied(facts.len() as u64, applied);
        let acks: Vec<Cmd> = round
            .acks()
            .iter()
            .map(|(key, ids)| {
                let mut cmd = redis::cmd("XACK");
                cmd.arg(key).arg(GROUP).arg(ids);
                cmd
            })
            .collect();
        let mut conn = self.conn.clone();
        self.bounded(conn.query_each(&acks)).await?;
        Ok(())
    }

    /// Drop entries every collector has acknowledged, and report the backlog.
    async fn trim(&mut self) -> Result<(), StreamError> {
        let mut cmds = Vec::with_capacity(self.keys.len() * 2);
        for key in &self.keys {
            let mut pending = redis::cmd("XPENDING");
            pending.arg(key).arg(GROUP);
            let mut groups = redis::cmd("XINFO");
            groups.arg("GROUPS").arg(key);
            cmds.extend([pending, groups]);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = self.bounded(conn.query_each(&cmds)).await?;
        let mut trims = Vec::new();
        let mut backlog = 0u64;
        for (key, pair) in self.keys.iter().zip(replies.chunks(2)) {
            let [pending, groups] = pair else { continue };
            let Some(group) = group_info(groups) else {
                continue;
            };
            backlog += group.lag.unwrap_or(0) + group.pending;
            // Everything before the oldest pending entry, else everything delivered.
            let min_id = match first_pending(pending) {
                Some(id) => id,
                None => match next_id(&group.last_delivered) {
                    Some(id) => id,
                    None => continue,
                },
            };
            let mut trim = redis::cmd("XTRIM");
            trim.arg(key).arg("MINID").arg(min_id);
            trims.push(trim);
        }
        self.bounded(conn.query_each(&trims)).await?;
        self.metrics.set_stream_backlog(backlog);
        Ok(())
    }
}

/// A connection to the counter's Redis (one server or a cluster) that reconnects by
/// itself.
pub fn connect(config: &StreamConfig) -> Result<RedisConn, ConnectError> {
    RedisConn::connect_lazy(&config.redis)
}

/// Each reply of [`RedisConn::query_each`] as a `T`.
fn parse_all<T: FromRedisValue>(replies: Vec<Value>) -> Result<Vec<T>, StreamError> {
    replies
        .into_iter()
        .map(|v| T::from_redis_value(v).map_err(|e| StreamError::Redis(e.into())))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ledger: {0}")]
    Ledger(crate::ledger::LedgerError),
}

struct GroupInfo {
    pending: u64,
    last_delivered: String,
    /// Entries not yet delivered to the group (Redis 7+).
    lag: Option<u64>,
}

/// Our group's line of `XINFO GROUPS` (a list of maps; RESP2 flat key/value lists).
fn group_info(reply: &Value) -> Option<GroupInfo> {
    let Value::Array(groups) = reply else {
        return None;
    };
    groups.iter().find_map(|g| {
        let Value::Array(kv) = g else { return None };
        let mut name = None;
        let mut pending = 0;
        let mut last_delivered = None;
        let mut lag = None;
        for pair in kv.chunks(2) {
            let [Value::BulkString(k), v] = pair else {
                continue;
            };
            match (k.as_slice(), v) {
                (b"name", Value::BulkString(n)) => name = Some(n.clone()),
                (b"pending", Value::Int(n)) => pending = u64::try_from(*n).unwrap_or(0),
                (b"last-delivered-id", Value::BulkString(id)) => {
                    last_delivered = Some(String::from_utf8_lossy(id).into_owned())
                }
                (b"lag", Value::Int(n)) => lag = u64::try_from(*n).ok(),
                _ => {}
            }
        }
        (name.as_deref() == Some(GROUP.as_bytes())).then_some(GroupInfo {
            pending,
            last_delivered: last_delivered?,
            lag,
        })
    })
}

/// The smallest pending id from the summary form of `XPENDING key group`.
fn first_pending(reply: &Value) -> Option<String> {
    let Value::Array(parts) = reply else {
        return None;
    };
    match parts.as_slice() {
        [Value::Int(n), Value::BulkString(first), ..] if *n > 0 => {
            Some(String::from_utf8_lossy(first).into_owned())
        }
        _ => None,
    }
}

/// The id right after `ms-seq`, so MINID trims `ms-seq` itself.
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    if ms == "0" && seq == 0 {
        return None;
    }
    Some(format!("{ms}-{}", seq.checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_stream_of_lease_reports_is_read_fewer_entries_at_a_time() {
        // Not read yet: as if full of lease reports.
        assert_eq!(FIRST_COUNT, 5);
        // One fact per entry (exact consumes): the full count.
        assert_eq!(next_count(FIRST_COUNT, 5, 5), READ_COUNT);
        // Lease reports of 100 records: 5 entries, 500 facts.
        assert_eq!(next_count(READ_COUNT, 40, 4_000), 5);
        // Mixed: the average decides, rounded up.
        assert_eq!(next_count(READ_COUNT, 100, 250), READ_COUNT / 3);
        // Lease bookkeeping only (no facts): still at least one entry per fact's worth.
        assert_eq!(next_count(5, 3, 0), READ_COUNT);
        // Nothing read: nothing learnt.
        assert_eq!(next_count(7, 0, 0), 7);
        // Never below one entry.
        assert_eq!(next_count(READ_COUNT, 1, 10_000), 1);
    }

    #[test]
    fn trimming_stops_at_the_oldest_pending_entry_or_after_the_last_delivered() {
        assert_eq!(next_id("1700-4").as_deref(), Some("1700-5"));
        assert_eq!(next_id("0-0"), None);
        let pending = Value::Array(vec![Value::Int(2), bulk("5-1"), bulk("9-0"), Value::Nil]);
        assert_eq!(first_pending(&pending).as_deref(), Some("5-1"));
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(first_pending(&none), None);
    }

    #[test]
    fn our_groups_line_is_found_among_others() {
        let group = |name: &str, pending: i64, last: &str| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("pending"),
                Value::Int(pending),
                bulk("last-delivered-id"),
                bulk(last),
                bulk("lag"),
                Value::Int(7),
            ])
        };
        let reply = Value::Array(vec![group("other", 9, "1-0"), group(GROUP, 3, "42-1")]);
        let info = group_info(&reply).unwrap();
        assert_eq!(
            (info.pending, info.last_delivered.as_str(), info.lag),
            (3, "42-1", Some(7))
        );
    }
}
