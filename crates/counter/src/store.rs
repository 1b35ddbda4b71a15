//! Redis I/O: the consume, refund and seed scripts, usage reads, health. Every call is
//! bounded by the configured timeout so a dead Redis answers fast, and the connection
//! (one server or a Redis Cluster, `turnpike_redis`) reconnects by itself in the
//! background. Every script touches the keys of one tenant bucket only, one hash
//! slot, so it runs unchanged on a cluster.

use std::future::Future;
use std::time::Duration;

use redis::{Script, Value};
use turnpike_redis::{Health, RedisConfig, RedisConn};

use crate::keys::TenantKeys;
use crate::ticket::{parse_record_slots, Ticket, WindowUnion, EXPIRE_GRACE_SECS};

/// A Redis operation failed or took too long.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    #[error(transparent)]
    Connect(#[from] turnpike_redis::ConnectError),
    /// The cluster answered, but does not serve every slot (failover in progress,
    /// a shard lost).
    #[error("redis cluster_state:{state} (slots ok {ok}, pfail {pfail}, fail {fail})")]
    ClusterDown {
        state: String,
        ok: u64,
        pfail: u64,
        fail: u64,
    },
}

impl StoreError {
    /// This error again, for each item of a batch that waited on the one call that
    /// failed (a timeout stays a timeout; the rest keep their text).
    pub fn for_another(&self) -> StoreError {
        match self {
            StoreError::Timeout(after) => StoreError::Timeout(*after),
            other => StoreError::Reply(other.to_string()),
        }
    }
}

/// What the consume script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// Decided now: `used` per ticket slot (after the increment when allowed).
    Decided {
        allowed: bool,
        now_ms: u64,
        used: Vec<u64>,
    },
    /// This id was consumed before: its record, and the slots' current values.
    Replayed {
        record: Record,
        now_ms: u64,
        used: Vec<u64>,
    },
    /// A window of the ticket does not contain Redis's time: build the ticket again
    /// for `now_ms` and retry.
    Stale { now_ms: u64 },
    /// The tenant's seed marker is gone: re-seed from the ledger, then retry.
    /// `required` when Redis may have lost usage of this month (the bucket's epoch
    /// is younger than the month); otherwise the ledger is asked on a best-effort basis.
    NeedsSeed { now_ms: u64, required: bool },
    /// The id was refunded before its consume arrived: nothing was consumed.
    Cancelled { now_ms: u64 },
}

/// What a consume call writes besides the counters: the stream entry and the record.
#[derive(Debug, Clone)]
pub struct ConsumeCall<'a> {
    pub tenant: &'a str,
    pub id: &'a str,
    /// Every meter of the request, `m=q,m=q` (also those no limit counts: the ledger
    /// bills them).
    pub meters: &'a str,
    /// Whether the tenant's seed marker must exist (a ledger is configured).
    pub require_seed: bool,
}

/// One consume of a [`Store::consume_many`] call.
#[derive(Debug, Clone)]
pub struct ManyCall<'a> {
    pub call: ConsumeCall<'a>,
    pub ticket: &'a Ticket,
    /// The index of each slot of `ticket` among the call's windows.
    pub windows: &'a [usize],
}

/// One settlement of a [`Store::settle_many`] call.
#[derive(Debug, Clone)]
pub struct ManySettle<'a> {
    pub id: &'a str,
    /// The record as read: the script applies the settlement only if it is unchanged.
    pub record: &'a Record,
    pub meters: &'a str,
    pub slots: &'a str,
    /// The change of each of the record's slots, in its order.
    pub deltas: &'a [i64],
}

/// An idempotency record: `S|T|METERS|SLOTS` (see consume.lua).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: RecordState,
    /// When the consume was decided, unix ms.
    pub time_ms: u64,
    pub meters: String,
    /// (window key suffix, cost) the consume took.
    pub slots: Vec<(String, u64)>,
    /// The record as stored, for the refund script's compare-and-set.
    pub raw: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    Allowed,
    /// Allowed, then settled: its meters and slots hold the final quantities.
    Settled,
    Refunded,
    /// A refund arrived before the consume: the consume will be refused.
    Cancelled,
}

impl Record {
    pub fn parse(raw: &str) -> Result<Record, StoreError> {
        let bad = || StoreError::Reply(format!("malformed idempotency record {raw:?}"));
        let mut parts = raw.splitn(4, '|');
        let (state, time, meters, slots) =
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(s), Some(t), Some(m), Some(l)) => (s, t, m, l),
                _ => return Err(bad()),
            };
        let state = match state {
            "A" => RecordState::Allowed,
            "S" => RecordState::Settled,
            "R" => RecordState::Refunded,
            "C" => RecordState::Cancelled,
            _ => return Err(bad()),
        };
        Ok(Record {
            state,
            time_ms: time.parse().map_err(|_| bad())?,
            meters: meters.to_owned(),
            slots: parse_record_slots(slots).ok_or_else(bad)?,
            raw: raw.to_owned(),
        })
    }
}

/// What the refund script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refunded {
    /// Units given back (and the refund recorded in the usage stream).
    Refunded,
    /// Already refunded or cancelled: nothing to do.
    Nothing,
    /// The consume had not arrived: a tombstone now refuses it.
    Cancelled,
    /// The record changed between the read and the script: read again.
    Changed,
}

pub struct Store {
    conn: RedisConn,
    timeout: Duration,
    record_ttl_secs: u64,
    consume: Script,
    consume_many: Script,
    refund: Script,
    seed: Script,
    settle: Script,
    settle_many: Script,
    lease: Script,
    lease_close: Script,
    lease_retire: Script,
    lease_pin: Script,
    lease_report: Script,
}

/// What the lease script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    /// `granted` requests (maybe 0) until `expires` (unix s); `used` per slot after.
    Granted {
        granted: u64,
        expires: i64,
        now_ms: u64,
        used: Vec<u64>,
    },
    Stale {
        now_ms: u64,
    },
    NeedsSeed {
        now_ms: u64,
        required: bool,
    },
    /// The lease to extend took from windows that have since rolled over.
    HeldStale {
        now_ms: u64,
    },
}

/// What the settle script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Settled,
    /// Unknown (the record expired), refunded, cancelled, or settled before.
    Nothing,
    /// The record changed between the read and the script: read again.
    Changed,
}

/// What a lease report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Counted spent from the open lease.
    Spent,
    /// Charged to the current windows, this many of the records: all of them when the
    /// lease was closed, those beyond what it can account for when it was not.
    Late(u64),
    /// This report was received before: nothing changed.
    Again,
}

/// What giving a lease up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// This call gave it up (it was open and not given up before).
    pub now: bool,
    /// Requests given back to its windows at once.
    pub returned: u64,
}

/// What closing a lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub granted: u64,
    pub spent: u64,
    pub returned: u64,
}

impl Store {
    /// A store connecting lazily: the service starts (and answers 503) even while
    /// Redis is down. Every call is bounded by `redis.timeout`.
    pub fn new(redis: &RedisConfig, record_ttl_secs: u64) -> Result<Store, StoreError> {
        let conn = RedisConn::connect_lazy(redis)?;
        let timeout = redis.timeout;
        Ok(Store {
            conn,
            timeout,
            record_ttl_secs,
            consume: Script::new(concat!(
                include_str!("lua/windows.lua"),
                include_str!("lua/consume.lua")
            )),
            consume_many: Script::new(concat!(
                include_str!("lua/windows.lua"),
                include_str!("lua/consume_many.lua")
            )),
            refund: Script::new(concat!(
                include_str!("lua/windows.lua"),
                include_str!("lua/refund.lua")
            )),
            seed: Script::new(include_str!("lua/seed.lua")),
            settle: Script::new(concat!(
                include_str!("lua/windows.lua"),
                include_str!("lua/settle.lua")
            )),
            settle_many: Script::new(include_str!("lua/settle_many.lua")),
            lease: Script::new(concat!(
                include_str!("lua/windows.lua"),
                include_str!("lua/lease.lua")
            )),
            lease_close: Script::new(concat!(
                include_str!("lua/windows.lua"),
                include_str!("lua/lease_close.lua")
            )),
            lease_retire: Script::new(concat!(
                include_str!("lua/windows.lua"),
                include_str!("lua/lease_retire.lua")
            )),
            lease_pin: Script::new(include_str!("lua/lease_pin.lua")),
            lease_report: Script::new(include_str!("lua/lease_report.lua")),
        })
    }

    /// Grant `want` requests of the route in `ticket` (costs per request) on lease `id`.
    pub async fn lease(
        &self,
        call: &ConsumeCall<'_>,
        ticket: &Ticket,
        id: u64,
        want: u64,
        policy: &crate::lease::LeasePolicy,
        return_delay_secs: i64,
    ) -> Result<Leased, StoreError> {
        let keys = TenantKeys::new(call.tenant);
        let mut invoke = self.lease.prepare_invoke();
        invoke
            .key(keys.lease(id))
            .key(keys.stream())
            .key(keys.seed_marker(ticket.month.0, &ticket.plan))
            .key(keys.epoch())
            .key(keys.lease_index())
            .arg(want)
            .arg(policy.max_share)
            .arg(policy.max_secs)
            .arg(EXPIRE_GRACE_SECS)
            .arg(u8::from(call.require_seed && ticket.has_long_windows()))
            .arg(ticket.month.0)
            .arg(ticket.month.1)
            .arg(id)
            .arg(call.tenant)
            .arg(call.meters)
            .arg(ticket.record_slots())
            .arg(return_delay_secs);
        for (slot, key) in ticket.slots.iter().zip(ticket.keys(&keys)) {
            invoke
                .key(key)
                .arg(slot.cost)
                .arg(slot.max)
                .arg(slot.start)
                .arg(slot.end);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.bounded(invoke.invoke_async(&mut conn)).await?;
        let bad = || StoreError::Reply(format!("lease script returned {reply:?}"));
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(i)) => Ok(*i),
            _ => Err(bad()),
        };
        let now_ms = u64::try_from(int(reply.get(1))?).map_err(|_| bad())?;
        match int(reply.first())? {
            1 => Ok(Leased::Granted {
                granted: u64::try_from(int(reply.get(2))?).map_err(|_| bad())?,
                expires: int(reply.get(3))?,
                now_ms,
                used: reply
                    .get(4)
                    .and_then(as_str)
                    .and_then(parse_csv)
                    .filter(|u| u.len() == ticket.slots.len())
                    .ok_or_else(bad)?,
            }),
            3 => Ok(Leased::Stale { now_ms }),
            4 => Ok(Leased::NeedsSeed {
                now_ms,
                required: int(reply.get(2))? == 1,
            }),
            6 => Ok(Leased::HeldStale { now_ms }),
            _ => Err(bad()),
        }
    }

    /// The record of lease `id`, if open.
    pub async fn lease_record(
        &self,
        tenant: &str,
        id: u64,
    ) -> Result<Option<crate::lease::LeaseRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, String)> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(TenantKeys::new(tenant).lease(id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(crate::lease::LeaseRecord::from_fields(&fields))
    }

    /// Give lease `id` up: never extended again, its unspent units back to its windows
    /// `return_delay_secs` from now (or from its end, if sooner), when the sweeper
    /// closes it; but `untaken` of them (with the lease's `record`, just read: requests
    /// its proxy says no worker took) at once, the first time it is said.
    pub async fn retire_lease(
        &self,
        tenant: &str,
        id: u64,
        return_delay_secs: i64,
        untaken: Option<(u64, &crate::lease::LeaseRecord)>,
    ) -> Result<Retired, StoreError> {
        let keys = TenantKeys::new(tenant);
        let mut invoke = self.lease_retire.prepare_invoke();
        invoke
            .key(keys.lease(id))
            .key(keys.lease_index())
            .arg(crate::lease::index_member(tenant, id))
            .arg(return_delay_secs)
            .arg(untaken.map_or(0, |(n, _)| n));
        if let Some((_, record)) = untaken {
            add_lease_windows(&mut invoke, &keys, record)?;
        }
        let mut conn = self.conn.clone();
        let (retired, returned): (i64, u64) = self.bounded(invoke.invoke_async(&mut conn)).await?;
        Ok(Retired {
            now: retired == 1,
            returned,
        })
    }

    /// Keep lease `id`'s units out `return_delay_secs` from now (or longer): requests
    /// its proxy admitted from it still run. `false` when it is closed already.
    pub async fn pin_lease(
        &self,
        tenant: &str,
        id: u64,
        return_delay_secs: i64,
    ) -> Result<bool, StoreError> {
        let keys = TenantKeys::new(tenant);
        let mut invoke = self.lease_pin.prepare_invoke();
        invoke
            .key(keys.lease(id))
            .key(keys.lease_index())
            .arg(crate::lease::index_member(tenant, id))
            .arg(return_delay_secs)
            .arg(EXPIRE_GRACE_SECS);
        let mut conn = self.conn.clone();
        let pinned: i64 = self.bounded(invoke.invoke_async(&mut conn)).await?;
        Ok(pinned == 1)
    }

    /// Drop lease `id` from its bucket's index when its record is gone (it outlived
    /// its record: the sweeper was away that long), so the sweeper stops finding it.
    pub async fn close_lease_gone(&self, tenant: &str, id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .bounded(
                redis::cmd("ZREM")
                    .arg(TenantKeys::new(tenant).lease_index())
                    .arg(crate::lease::index_member(tenant, id))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Give back what lease `id` (whose `record` was just read) did not spend.
    pub async fn close_lease(
        &self,
        tenant: &str,
        id: u64,
        record: &crate::lease::LeaseRecord,
    ) -> Result<Option<Closed>, StoreError> {
        let keys = TenantKeys::new(tenant);
        let mut invoke = self.lease_close.prepare_invoke();
        invoke
            .key(keys.lease(id))
            .key(keys.stream())
            .key(keys.lease_index())
            .arg(crate::lease::index_member(tenant, id))
            .arg(id)
            .arg(tenant);
        add_lease_windows(&mut invoke, &keys, record)?;
        let mut conn = self.conn.clone();
        let (closed, granted, spent, returned): (i64, u64, u64, u64) =
            self.bounded(invoke.invoke_async(&mut conn)).await?;
        Ok((closed == 1).then_some(Closed {
            granted,
            spent,
            returned,
        }))
    }

    /// Append requests admitted from lease `id` to the usage stream and count them spent
    /// (or, for a lease already closed, charge them to `ticket`'s current windows).
    #[allow(clippy::too_many_arguments)]
    pub async fn lease_report(
        &self,
        tenant: &str,
        plan: &str,
        meters: &str,
        id: u64,
        batch: &str,
        records: &[(String, u64)],
        ticket: &Ticket,
    ) -> Result<Reported, StoreError> {
        let keys = TenantKeys::new(tenant);
        let mut invoke = self.lease_report.prepare_invoke();
        invoke
            .key(keys.lease(id))
            .key(keys.stream())
            .key(keys.lease_report(batch))
            .arg(id)
            .arg(tenant)
            .arg(plan)
            .arg(meters)
            .arg(EXPIRE_GRACE_SECS)
            .arg(records.len());
        let entries: Vec<String> = turnpike_wire::lease_stream_records(records).collect();
        invoke.arg(entries.len());
        for entry in entries {
            invoke.arg(entry);
        }
        for (slot, key) in ticket.slots.iter().zip(ticket.keys(&keys)) {
            invoke.key(key).arg(slot.cost).arg(slot.end);
        }
        invoke.arg(self.record_ttl_secs);
        let mut conn = self.conn.clone();
        let (_recorded, outcome, charged): (u64, i64, u64) =
            self.bounded(invoke.invoke_async(&mut conn)).await?;
        Ok(match outcome {
            0 => Reported::Spent,
            1 => Reported::Late(charged),
            _ => Reported::Again,
        })
    }

    /// Open leases past their expiry in every bucket (at most `limit` per bucket), as
    /// `TENANT:ID` members.
    pub async fn expired_leases(&self, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        // One command per bucket, each in its own slot: a cluster cannot pipeline them
        // across nodes, so `query_each` routes each to its master (one pipeline on a
        // single Redis).
        let cmds: Vec<redis::Cmd> = (0..turnpike_plans::keys::BUCKETS)
            .map(|bucket| {
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(turnpike_plans::keys::lease_index_key(bucket))
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
                cmd
            })
            .collect();
        let mut conn = self.conn.clone();
        let replies = self.bounded(conn.query_each(&cmds)).await?;
        let mut found = Vec::new();
        for reply in replies {
            let members: Vec<String> =
                redis::FromRedisValue::from_redis_value(reply).map_err(redis::RedisError::from)?;
            found.extend(members);
        }
        Ok(found)
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Run check-and-consume for `ticket`.
    pub async fn consume(
        &self,
        call: &ConsumeCall<'_>,
        ticket: &Ticket,
    ) -> Result<Consumed, StoreError> {
        let keys = TenantKeys::new(call.tenant);
        let mut invoke = self.consume.prepare_invoke();
        invoke
            .key(keys.record(call.id))
            .key(keys.stream())
            .key(keys.seed_marker(ticket.month.0, &ticket.plan))
            .key(keys.epoch())
            .arg(self.record_ttl_secs)
            .arg(u8::from(call.require_seed && ticket.has_long_windows()))
            .arg(ticket.month.0)
            .arg(ticket.month.1)
            .arg(call.id)
            .arg(call.tenant)
            .arg(&ticket.plan)
            .arg(call.meters)
            .arg(ticket.record_slots())
            .arg(EXPIRE_GRACE_SECS);
        for (slot, key) in ticket.slots.iter().zip(ticket.keys(&keys)) {
            invoke
                .key(key)
                .arg(slot.cost)
                .arg(slot.max)
                .arg(slot.start)
                .arg(slot.end);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.bounded(invoke.invoke_async(&mut conn)).await?;
        parse_consume_reply(&reply, ticket.slots.len())
    }

    /// Run check-and-consume for several consumes of one tenant, in one script, in
    /// order: each is decided as [`Store::consume`] would decide it, one after
    /// another. `windows` holds every window their tickets take from, and each
    /// consume comes with its ticket's slots as indexes into it
    /// ([`WindowUnion::join`]). A stale window or a missing seed marker is answered
    /// for all of them.
    pub async fn consume_many(
        &self,
        windows: &WindowUnion,
        consumes: &[ManyCall<'_>],
    ) -> Result<Vec<Consumed>, StoreError> {
        let Some(first) = consumes.first() else {
            return Ok(Vec::new());
        };
        let keys = TenantKeys::new(first.call.tenant);
        let mut invoke = self.consume_many.prepare_invoke();
        invoke
            .key(keys.stream())
            .key(keys.seed_marker(windows.month.0, &windows.plan))
            .key(keys.epoch())
            .arg(self.record_ttl_secs)
            .arg(u8::from(
                first.call.require_seed && windows.has_long_windows(),
            ))
            .arg(windows.month.0)
            .arg(windows.month.1)
            .arg(first.call.tenant)
            .arg(&windows.plan)
            .arg(EXPIRE_GRACE_SECS)
            .arg(windows.slots.len())
            .arg(turnpike_wire::LEASE_RECORDS_PER_STREAM_ENTRY);
        for (slot, key) in windows.slots.iter().zip(windows.keys(&keys)) {
            invoke.key(key).arg(slot.max).arg(slot.start).arg(slot.end);
        }
        let (shapes, shape_of) = shapes(consumes);
        invoke.arg(shapes.len());
        for one in shapes {
            invoke
                .arg(one.call.meters)
                .arg(one.ticket.record_slots())
                .arg(one.ticket.slots.len());
            for (slot, index) in one.ticket.slots.iter().zip(one.windows) {
                // Lua counts from 1.
                invoke.arg(index + 1).arg(slot.cost);
            }
        }
        for (one, shape) in consumes.iter().zip(shape_of) {
            invoke
                .key(keys.record(one.call.id))
                .arg(one.call.id)
                .arg(shape + 1);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.bounded(invoke.invoke_async(&mut conn)).await?;
        parse_consume_many_reply(&reply, consumes)
    }

    /// Re-seed the long windows of `ticket` (a [`Ticket::for_plan`]) with the ledger's
    /// `units` per slot, unless another replica already did. Returns the units added.
    /// With no `units`, only the marker is set (the ledger could not answer a
    /// best-effort seed).
    pub async fn seed(
        &self,
        tenant: &str,
        ticket: &Ticket,
        units: &[u64],
    ) -> Result<Option<u64>, StoreError> {
        let keys = TenantKeys::new(tenant);
        let mut invoke = self.seed.prepare_invoke();
        invoke
            .key(keys.seed_marker(ticket.month.0, &ticket.plan))
            .arg(EXPIRE_GRACE_SECS)
            .arg(ticket.month.1);
        for ((slot, key), units) in ticket.slots.iter().zip(ticket.keys(&keys)).zip(units) {
            if slot.window.is_long() {
                invoke.key(key).arg(*units).arg(slot.end);
            }
        }
        let mut conn = self.conn.clone();
        let reply: (i64, i64) = self.bounded(invoke.invoke_async(&mut conn)).await?;
        Ok((reply.0 == 1).then(|| u64::try_from(reply.1).unwrap_or(0)))
    }

    /// Read the idempotency record of consume `id`, if it still exists.
    pub async fn record(&self, tenant: &str, id: &str) -> Result<Option<Record>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self
            .bounded(
                redis::cmd("GET")
                    .arg(TenantKeys::new(tenant).record(id))
                    .query_async(&mut conn),
            )
            .await?;
        raw.map(|raw| Record::parse(&raw)).transpose()
    }

    /// Give back what consume `id` took, as its `record` (read just before) says;
    /// with no record, leave a tombstone that refuses the consume if it comes later.
    pub async fn refund(
        &self,
        tenant: &str,
        id: &str,
        record: Option<&Record>,
    ) -> Result<Refunded, StoreError> {
        let keys = TenantKeys::new(tenant);
        let mut invoke = self.refund.prepare_invoke();
        invoke
            .key(keys.record(id))
            .key(keys.stream())
            .arg(record.map_or("", |r| r.raw.as_str()))
            .arg(self.record_ttl_secs)
            .arg(id)
            .arg(tenant);
        for (suffix, cost) in record.map_or(&[][..], |r| &r.slots[..]) {
            invoke.key(keys.window_from_suffix(suffix)).arg(*cost);
        }
        let mut conn = self.conn.clone();
        let code: i64 = self.bounded(invoke.invoke_async(&mut conn)).await?;
        match code {
            1 => Ok(Refunded::Refunded),
            0 => Ok(Refunded::Nothing),
            2 => Ok(Refunded::Cancelled),
            3 => Ok(Refunded::Changed),
            other => Err(StoreError::Reply(format!("refund script returned {other}"))),
        }
    }

    /// Settle consume `id` (whose `record` was just read) to `meters` (final quantities
    /// of every meter) with `slots` (final cost per slot) and `deltas` (final -
    /// reserved, per slot of the record).
    pub async fn settle(
        &self,
        tenant: &str,
        id: &str,
        record: &Record,
        meters: &str,
        slots: &str,
        deltas: &[i64],
    ) -> Result<Settled, StoreError> {
        let keys = TenantKeys::new(tenant);
        let mut invoke = self.settle.prepare_invoke();
        invoke
            .key(keys.record(id))
            .key(keys.stream())
            .arg(&record.raw)
            .arg(meters)
            .arg(slots)
            .arg(id)
            .arg(tenant);
        for ((suffix, _), delta) in record.slots.iter().zip(deltas) {
            invoke.key(keys.window_from_suffix(suffix)).arg(*delta);
        }
        let mut conn = self.conn.clone();
        let code: i64 = self.bounded(invoke.invoke_async(&mut conn)).await?;
        Ok(match code {
            1 => Settled::Settled,
            3 => Settled::Changed,
            _ => Settled::Nothing,
        })
    }

    /// The idempotency records of the consumes `ids` of `tenant`, in order: one read.
    pub async fn records(
        &self,
        tenant: &str,
        ids: &[&str],
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let keys = TenantKeys::new(tenant);
        let names: Vec<String> = ids.iter().map(|id| keys.record(id)).collect();
        let mut conn = self.conn.clone();
        let raw: Vec<Option<String>> = self
            .bounded(redis::cmd("MGET").arg(&names).query_async(&mut conn))
            .await?;
        if raw.len() != ids.len() {
            return Err(StoreError::Reply(format!("MGET returned {raw:?}")));
        }
        raw.into_iter()
            .map(|r| r.map(|raw| Record::parse(&raw)).transpose())
            .collect()
    }

    /// Apply several settlements of `tenant`, each planned from the record it was
    /// read with, in one script and in order, each as [`Store::settle`] applies one.
    pub async fn settle_many(
        &self,
        tenant: &str,
        settlements: &[ManySettle<'_>],
    ) -> Result<Vec<Settled>, StoreError> {
        let keys = TenantKeys::new(tenant);
        // Every window the records name, once; each settlement's as indexes into them.
        let mut windows: Vec<&str> = Vec::new();
        let mut indexes: Vec<Vec<usize>> = Vec::with_capacity(settlements.len());
        for one in settlements {
            let mut mine = Vec::with_capacity(one.record.slots.len());
            for (suffix, _) in &one.record.slots {
                let i = match windows.iter().position(|w| *w == suffix.as_str()) {
                    Some(i) => i,
                    None => {
                        windows.push(suffix);
                        windows.len() - 1
                    }
                };
                mine.push(i);
            }
            indexes.push(mine);
        }
        let mut invoke = self.settle_many.prepare_invoke();
        invoke.key(keys.stream()).arg(tenant).arg(windows.len());
        for suffix in &windows {
            invoke.key(keys.window_from_suffix(suffix));
        }
        for (one, mine) in settlements.iter().zip(&indexes) {
            invoke
                .key(keys.record(one.id))
                .arg(&one.record.raw)
                .arg(one.meters)
                .arg(one.slots)
                .arg(one.id)
                .arg(mine.len());
            for (i, delta) in mine.iter().zip(one.deltas) {
                // Lua counts from 1.
                invoke.arg(i + 1).arg(*delta);
            }
        }
        let mut conn = self.conn.clone();
        let codes: Vec<i64> = self.bounded(invoke.invoke_async(&mut conn)).await?;
        if codes.len() != settlements.len() {
            return Err(StoreError::Reply(format!(
                "settle_many script returned {codes:?}"
            )));
        }
        Ok(codes
            .into_iter()
            .map(|code| match code {
                1 => Settled::Settled,
                3 => Settled::Changed,
                _ => Settled::Nothing,
            })
            .collect())
    }

    /// Current values of window counters (0 for absent keys), without writing.
    pub async fn read(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<u64>> = self
            .bounded(redis::cmd("MGET").arg(keys).query_async(&mut conn))
            .await?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Redis's clock, unix milliseconds.
    pub async fn time_ms(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let (secs, micros): (u64, u64) = self
            .bounded(redis::cmd("TIME").query_async(&mut conn))
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// One server: it answers PING. A cluster: it serves every slot (`CLUSTER INFO`
    /// says `cluster_state:ok`); otherwise [`StoreError::ClusterDown`].
    pub async fn health(&self) -> Result<Health, StoreError> {
        let mut conn = self.conn.clone();
        let health = match self.bounded(conn.health()).await {
            Ok(health) => health,
            Err(e) => {
                // The cluster connection may be what cannot answer (rebuilding against
                // a dead seed): ask a node directly, so a cluster that is down says so
                // with its own figures instead of "timed out".
                let direct = tokio::time::timeout(self.timeout, conn.cluster_info_direct());
                return match direct.await {
                    Ok(Some(info)) if !info.is_ok() => Err(cluster_down(&info)),
                    _ => Err(e),
                };
            }
        };
        match &health.cluster {
            Some(info) if !info.is_ok() => Err(cluster_down(info)),
            _ => Ok(health),
        }
    }
}

/// The windows a lease took from (its `record`'s slots) as the script's next keys,
/// each with its cost a request as the next argument.
fn add_lease_windows(
    invoke: &mut redis::ScriptInvocation<'_>,
    keys: &TenantKeys,
    record: &crate::lease::LeaseRecord,
) -> Result<(), StoreError> {
    let slots = parse_record_slots(&record.slots)
        .ok_or_else(|| StoreError::Reply(format!("lease slots {:?}", record.slots)))?;
    for (suffix, cost) in &slots {
        invoke.key(keys.window_from_suffix(suffix)).arg(*cost);
    }
    Ok(())
}

fn cluster_down(info: &turnpike_redis::ClusterInfo) -> StoreError {
    StoreError::ClusterDown {
        state: info.state.clone(),
        ok: info.slots_ok,
        pfail: info.slots_pfail,
        fail: info.slots_fail,
    }
}

/// `{code, now_ms, payload[, used]}` (see consume.lua).
fn parse_consume_reply(reply: &[Value], slots: usize) -> Result<Consumed, StoreError> {
    let bad = || StoreError::Reply(format!("consume script returned {reply:?}"));
    let used = |value: &Value| -> Result<Vec<u64>, StoreError> {
        let used = parse_csv(as_str(value).ok_or_else(bad)?).ok_or_else(bad)?;
        if used.len() == slots {
            Ok(used)
        } else {
            Err(bad())
        }
    };
    let now_ms = match reply.get(1) {
        Some(Value::Int(ms)) => u64::try_from(*ms).map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    match reply {
        [Value::Int(code @ (0 | 1)), _, csv] => Ok(Consumed::Decided {
            allowed: *code == 1,
            now_ms,
            used: used(csv)?,
        }),
        [Value::Int(2), _, record, csv] => Ok(Consumed::Replayed {
            record: Record::parse(as_str(record).ok_or_else(bad)?)?,
            now_ms,
            used: used(csv)?,
        }),
        [Value::Int(3), _] => Ok(Consumed::Stale { now_ms }),
        [Value::Int(4), _, Value::Int(required)] => Ok(Consumed::NeedsSeed {
            now_ms,
            required: *required == 1,
        }),
        [Value::Int(5), _] => Ok(Consumed::Cancelled { now_ms }),
        _ => Err(bad()),
    }
}

/// The distinct shapes of `consumes` (meters, slots and windows: what their records and
/// checks are made of), in the order first seen, and each consume's shape among them.
/// consume_many.lua reads each shape once: a batch's consumes mostly share one.
fn shapes<'c, 'a>(consumes: &'c [ManyCall<'a>]) -> (Vec<&'c ManyCall<'a>>, Vec<usize>) {
    let mut shapes: Vec<&ManyCall<'_>> = Vec::new();
    let shape_of = consumes
        .iter()
        .map(|one| {
            let same = |s: &&ManyCall<'_>| {
                s.call.meters == one.call.meters
                    && s.windows == one.windows
                    && s.ticket.slots == one.ticket.slots
            };
            shapes.iter().position(same).unwrap_or_else(|| {
                shapes.push(one);
                shapes.len() - 1
            })
        })
        .collect();
    (shapes, shape_of)
}

/// consume_many.lua's reply: one [`Consumed`] per consume, in order. The script
/// answers with each window's value as found and each consume's outcome; the used
/// values an answer shows are worked out here, in order, as the script applied them.
fn parse_consume_many_reply(
    reply: &[Value],
    consumes: &[ManyCall<'_>],
) -> Result<Vec<Consumed>, StoreError> {
    let bad = || StoreError::Reply(format!("consume_many script returned {reply:?}"));
    let (now_ms, found, outcomes) = match reply {
        [Value::Int(1), Value::Int(now_ms), Value::Array(found), Value::Array(outcomes)]
            if outcomes.len() == consumes.len() =>
        {
            (u64::try_from(*now_ms).map_err(|_| bad())?, found, outcomes)
        }
        // Stale or re-seed: the same for every consume of the call.
        [Value::Int(3 | 4), ..] => {
            let one = parse_consume_reply(reply, 0)?;
            return Ok(vec![one; consumes.len()]);
        }
        _ => return Err(bad()),
    };
    let mut used: Vec<u64> = found
        .iter()
        .map(|v| match v {
            Value::Int(i) => u64::try_from(*i).map_err(|_| bad()),
            _ => Err(bad()),
        })
        .collect::<Result<_, _>>()?;
    let mut decided = Vec::with_capacity(consumes.len());
    for (outcome, one) in outcomes.iter().zip(consumes) {
        if one.windows.len() != one.ticket.slots.len()
            || one.windows.iter().any(|&i| i >= used.len())
        {
            return Err(bad());
        }
        if let Value::Int(1) = outcome {
            for (slot, &i) in one.ticket.slots.iter().zip(one.windows) {
                used[i] = used[i].saturating_add(slot.cost);
            }
        }
        let mine = || one.windows.iter().map(|&i| used[i]).collect();
        decided.push(match outcome {
            Value::Int(code @ (0 | 1)) => Consumed::Decided {
                allowed: *code == 1,
                now_ms,
                used: mine(),
            },
            Value::Int(5) => Consumed::Cancelled { now_ms },
            record => Consumed::Replayed {
                record: Record::parse(as_str(record).ok_or_else(bad)?)?,
                now_ms,
                used: mine(),
            },
        });
    }
    Ok(decided)
}

fn as_str(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn parse_csv(csv: &str) -> Option<Vec<u64>> {
    if csv.is_empty() {
        return Some(Vec::new());
    }
    csv.split(',').map(|v| v.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn ticket(costs: &[u64]) -> Ticket {
        let slot = |name: &str, cost: u64| crate::ticket::Slot {
            name: name.into(),
            meter: name.into(),
            window: turnpike_plans::Window::Day,
            max: 10,
            soft: None,
            start: 0,
            end: 86_400,
            cost,
        };
        Ticket {
            plan: "p".into(),
            month: (0, 1),
            slots: costs
                .iter()
                .enumerate()
                .map(|(i, &c)| slot(&format!("m{i}"), c))
                .collect(),
        }
    }

    #[test]
    fn consumes_of_one_shape_send_it_once_and_any_difference_makes_another() {
        let (one, same, costlier) = (ticket(&[1, 2]), ticket(&[1, 2]), ticket(&[1, 3]));
        let many = |meters, ticket, windows| ManyCall {
            call: ConsumeCall {
                tenant: "t",
                id: "x",
                meters,
                require_seed: false,
            },
            ticket,
            windows,
        };
        let calls = [
            many("m0=1,m1=2", &one, &[0, 1][..]),
            many("m0=1,m1=2", &same, &[0, 1][..]),
            many("m0=1,m1=3", &costlier, &[0, 1][..]),
            many("m0=1,m1=2", &one, &[1, 0][..]),
            many("m0=1,m1=2,x=1", &one, &[0, 1][..]),
            many("m0=1,m1=2", &same, &[0, 1][..]),
            many("m0=1,m1=3", &costlier, &[0, 1][..]),
        ];
        let (shapes, shape_of) = shapes(&calls);
        assert_eq!(shape_of, [0, 0, 1, 2, 3, 0, 1]);
        assert_eq!(shapes.len(), 4);
        for (call, shape) in calls.iter().zip(&shape_of) {
            let s = shapes[*shape];
            assert_eq!(
                (s.call.meters, s.windows, s.ticket.record_slots()),
                (call.call.meters, call.windows, call.ticket.record_slots())
            );
        }
    }

    #[test]
    fn a_many_reply_shows_each_consume_the_values_as_it_left_them_in_its_own_order() {
        // Windows A, B as found: 3 and 5. One consume takes 2 of A; one takes 1 of B and
        // 6 of A (its ticket's order), denied; one takes 1 of B; then a replay and a
        // cancelled one.
        let (one, two, three) = (ticket(&[2]), ticket(&[1, 6]), ticket(&[1]));
        let call = |id| ConsumeCall {
            tenant: "t",
            id,
            meters: "m=1",
            require_seed: false,
        };
        let many = |id, ticket, windows| ManyCall {
            call: call(id),
            ticket,
            windows,
        };
        let calls = [
            many("a", &one, &[0][..]),
            many("b", &two, &[1, 0][..]),
            many("c", &three, &[1][..]),
            many("a", &one, &[0][..]),
            many("d", &three, &[1][..]),
        ];
        let reply = [
            Value::Int(1),
            Value::Int(77),
            Value::Array(vec![Value::Int(3), Value::Int(5)]),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(0),
                Value::Int(1),
                bulk("A|70|m=1|d=2"),
                Value::Int(5),
            ]),
        ];
        let decided = parse_consume_many_reply(&reply, &calls).unwrap();
        let used = |d: &Consumed| match d {
            Consumed::Decided { used, .. } | Consumed::Replayed { used, .. } => used.clone(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            decided[0],
            Consumed::Decided {
                allowed: true,
                now_ms: 77,
                ..
            }
        ));
        assert_eq!(used(&decided[0]), [5]);
        assert!(matches!(
            decided[1],
            Consumed::Decided { allowed: false, .. }
        ));
        assert_eq!(used(&decided[1]), [5, 5]);
        assert_eq!(used(&decided[2]), [6]);
        assert!(matches!(&decided[3], Consumed::Replayed { record, .. } if record.time_ms == 70));
        assert_eq!(used(&decided[3]), [5]);
        assert_eq!(decided[4], Consumed::Cancelled { now_ms: 77 });
        // Stale: for every consume; a reply that does not fit the call: an error.
        let stale = parse_consume_many_reply(&[Value::Int(3), Value::Int(9)], &calls).unwrap();
        assert_eq!(stale, vec![Consumed::Stale { now_ms: 9 }; 5]);
        assert!(parse_consume_many_reply(&reply[..3], &calls).is_err());
        assert!(parse_consume_many_reply(&reply, &calls[..4]).is_err());
    }

    #[test]
    fn decided_reply_yields_used_values_in_slot_order() {
        let reply = [Value::Int(1), Value::Int(7), bulk("3,4503599627370496")];
        assert_eq!(
            parse_consume_reply(&reply, 2).unwrap(),
            Consumed::Decided {
                allowed: true,
                now_ms: 7,
                used: vec![3, 4_503_599_627_370_496]
            }
        );
        let denied = [Value::Int(0), Value::Int(7), bulk("")];
        assert!(matches!(
            parse_consume_reply(&denied, 0).unwrap(),
            Consumed::Decided { allowed: false, .. }
        ));
    }

    #[test]
    fn replayed_reply_carries_the_stored_record_and_current_values() {
        let reply = [
            Value::Int(2),
            Value::Int(9),
            bulk("A|1700000000123|requests=1|requests:minute:60=1"),
            bulk("5"),
        ];
        let Consumed::Replayed { record, used, .. } = parse_consume_reply(&reply, 1).unwrap()
        else {
            panic!("not a replay");
        };
        assert_eq!(record.state, RecordState::Allowed);
        assert_eq!(record.time_ms, 1_700_000_000_123);
        assert_eq!(record.slots, [("requests:minute:60".to_owned(), 1)]);
        assert_eq!(used, [5]);
    }

    #[test]
    fn control_replies_carry_redis_time() {
        assert_eq!(
            parse_consume_reply(&[Value::Int(4), Value::Int(42), Value::Int(1)], 3).unwrap(),
            Consumed::NeedsSeed {
                now_ms: 42,
                required: true
            }
        );
        for (code, want) in [
            (3, Consumed::Stale { now_ms: 42 }),
            (5, Consumed::Cancelled { now_ms: 42 }),
        ] {
            assert_eq!(
                parse_consume_reply(&[Value::Int(code), Value::Int(42)], 3).unwrap(),
                want
            );
        }
    }

    #[test]
    fn records_parse_every_state_and_refuse_garbage() {
        let r = Record::parse("R|5|requests=1|requests:day:0=1;search_units:day:0=5").unwrap();
        assert_eq!(r.state, RecordState::Refunded);
        assert_eq!(r.slots.len(), 2);
        let tomb = Record::parse("C|0||").unwrap();
        assert_eq!((tomb.state, tomb.slots.len()), (RecordState::Cancelled, 0));
        for bad in ["", "A|x|m|", "X|1|m|", "A|1|m", "A|1|m|q:day:0=x"] {
            assert!(Record::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(parse_consume_reply(&[], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(1), Value::Int(1), bulk("x")], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(1), Value::Int(1), bulk("1,2")], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(6), Value::Int(1)], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(1), Value::Int(-1), bulk("1")], 1).is_err());
    }
}
