//! Redis I/O: the consume and refund scripts, usage reads, health. Every call is
//! bounded by the configured timeout so a dead Redis answers fast, and the
//! `ConnectionManager` reconnects by itself in the background.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, Value};

use crate::ticket::{idempotency_key, Ticket};

/// A Redis operation failed or took too long.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// What the consume script decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub allowed: bool,
    /// Per ticket slot: units used after this consume (as found, when denied).
    pub used: Vec<u64>,
    /// The stored ticket when this id was consumed before: answer from it, not
    /// from the ticket just built.
    pub replayed_ticket: Option<Ticket>,
}

/// An idempotency record: `AR|USED|TICKET` (see consume.lua).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub allowed: bool,
    pub refunded: bool,
    /// Counter values the consume answered with, in ticket slot order.
    pub used: Vec<u64>,
    pub ticket: Ticket,
}

impl Record {
    fn parse(raw: &str) -> Result<Record, StoreError> {
        let bad = || StoreError::Reply(format!("malformed idempotency record {raw:?}"));
        let mut parts = raw.splitn(3, '|');
        let (flags, used, ticket) = match (parts.next(), parts.next(), parts.next()) {
            (Some(flags), Some(used), Some(ticket)) => (flags, used, ticket),
            _ => return Err(bad()),
        };
        let (allowed, refunded) = match flags.as_bytes() {
            [a, r] => (*a == b'1', *r == b'1'),
            _ => return Err(bad()),
        };
        let used = parse_csv(used).ok_or_else(bad)?;
        let ticket = decode_ticket(ticket)?;
        if ticket.slots.len() != used.len() {
            return Err(bad());
        }
        Ok(Record {
            allowed,
            refunded,
            used,
            ticket,
        })
    }
}

pub struct Store {
    conn: ConnectionManager,
    timeout: Duration,
    idempotency_ttl_secs: u64,
    consume: Script,
    refund: Script,
}

impl Store {
    /// A store connecting lazily: the service starts (and answers 503) even while
    /// Redis is down.
    pub fn new(
        url: &str,
        timeout: Duration,
        idempotency_ttl_secs: u64,
    ) -> Result<Store, StoreError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Few, quick retries: callers time out anyway, and the next request
            // after a failure triggers a fresh reconnect.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Store {
            conn,
            timeout,
            idempotency_ttl_secs,
            consume: Script::new(include_str!("lua/consume.lua")),
            refund: Script::new(include_str!("lua/refund.lua")),
        })
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

    /// Run check-and-consume for `ticket` under consume id `id`.
    pub async fn consume(
        &self,
        tenant: &str,
        id: &str,
        ticket: &Ticket,
    ) -> Result<Consumed, StoreError> {
        let ticket_json = serde_json::to_string(ticket)
            .map_err(|e| StoreError::Reply(format!("cannot encode ticket: {e}")))?;
        let mut call = self.consume.prepare_invoke();
        call.key(idempotency_key(tenant, id))
            .arg(self.idempotency_ttl_secs)
            .arg(ticket_json);
        for slot in &ticket.slots {
            call.key(slot.key(tenant))
                .arg(slot.cost)
                .arg(slot.max)
                .arg(slot.expire_at());
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.bounded(call.invoke_async(&mut conn)).await?;
        parse_consume_reply(&reply, ticket.slots.len())
    }

    /// Read the idempotency record of consume `id`, if it still exists.
    pub async fn record(&self, tenant: &str, id: &str) -> Result<Option<Record>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self
            .bounded(
                redis::cmd("GET")
                    .arg(idempotency_key(tenant, id))
                    .query_async(&mut conn),
            )
            .await?;
        raw.map(|raw| Record::parse(&raw)).transpose()
    }

    /// Give back the costs of an allowed, not yet refunded consume. The script
    /// re-checks the record, so concurrent refunds give back once.
    pub async fn refund(
        &self,
        tenant: &str,
        id: &str,
        ticket: &Ticket,
    ) -> Result<bool, StoreError> {
        let mut call = self.refund.prepare_invoke();
        call.key(idempotency_key(tenant, id));
        for slot in &ticket.slots {
            call.key(slot.key(tenant)).arg(slot.cost);
        }
        let mut conn = self.conn.clone();
        let refunded: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(refunded == 1)
    }

    /// Current values of window counters (0 for absent keys), without writing.
    pub async fn read(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let values: Vec<Option<u64>> = self
            .bounded(redis::cmd("MGET").arg(keys).query_async(&mut conn))
            .await?;
        Ok(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }
}

/// `{0, allowed, used csv}` or `{1, allowed, record}` (see consume.lua).
fn parse_consume_reply(reply: &[Value], slots: usize) -> Result<Consumed, StoreError> {
    let bad = || StoreError::Reply(format!("consume script returned {reply:?}"));
    match reply {
        [Value::Int(0), Value::Int(allowed), csv] => {
            let used = parse_csv(as_str(csv).ok_or_else(bad)?).ok_or_else(bad)?;
            if used.len() != slots {
                return Err(bad());
            }
            Ok(Consumed {
                allowed: *allowed == 1,
                used,
                replayed_ticket: None,
            })
        }
        [Value::Int(1), Value::Int(_), record] => {
            let record = Record::parse(as_str(record).ok_or_else(bad)?)?;
            Ok(Consumed {
                allowed: record.allowed,
                used: record.used,
                replayed_ticket: Some(record.ticket),
            })
        }
        _ => Err(bad()),
    }
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

fn decode_ticket(json: &str) -> Result<Ticket, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Reply(format!("stored ticket: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn fresh_reply_yields_used_values_in_slot_order() {
        let reply = [Value::Int(0), Value::Int(1), bulk("3,4503599627370496")];
        let c = parse_consume_reply(&reply, 2).unwrap();
        assert!(c.allowed);
        assert_eq!(c.used, [3, 4_503_599_627_370_496]);
        assert_eq!(c.replayed_ticket, None);
    }

    #[test]
    fn reply_with_no_slots_has_no_used_values() {
        let c = parse_consume_reply(&[Value::Int(0), Value::Int(1), bulk("")], 0).unwrap();
        assert!(c.used.is_empty());
    }

    const TICKET: &str =
        r#"{"p":"free","l":[{"n":"pm","m":"requests","w":"minute","x":5,"b":60,"e":120,"c":1}]}"#;

    #[test]
    fn replayed_reply_carries_the_stored_ticket_and_used_values() {
        let reply = [
            Value::Int(1),
            Value::Int(0),
            bulk(&format!("00|5|{TICKET}")),
        ];
        let c = parse_consume_reply(&reply, 7).unwrap();
        assert!(!c.allowed);
        assert_eq!(c.used, [5]);
        assert_eq!(c.replayed_ticket.unwrap().plan, "free");
    }

    #[test]
    fn record_flags_say_allowed_and_refunded() {
        let r = Record::parse(&format!("11|3|{TICKET}")).unwrap();
        assert!(r.allowed && r.refunded);
        let r = Record::parse(&format!("10|3|{TICKET}")).unwrap();
        assert!(r.allowed && !r.refunded);
        assert!(Record::parse("10|3").is_err());
        assert!(Record::parse(&format!("1|3|{TICKET}")).is_err());
        assert!(Record::parse(&format!("10|3,4|{TICKET}")).is_err());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(parse_consume_reply(&[], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(0), Value::Int(1), bulk("x")], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(0), Value::Int(1), bulk("1,2")], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(1), Value::Int(1), bulk("1")], 1).is_err());
        assert!(parse_consume_reply(&[Value::Int(2), Value::Int(1), bulk("1")], 1).is_err());
    }
}
