//! Relearning a cluster's topology when calls fail.
//!
//! redis-rs refreshes its slot map when a node answers MOVED or ASK, and reconnects
//! to a node whose connection reports being dropped. A master that dies without
//! closing its sockets (a host gone, a container killed: its address then swallows
//! packets) reports nothing: calls to its slots time out, the client keeps its stale
//! slot map, and no node ever answers MOVED, because no call reaches a live node.
//! After the cluster promotes the replica, such a client would stay stuck.
//!
//! So every failed call (a timeout, a dropped connection, CLUSTERDOWN, a call its
//! caller gave up on) makes the connection ask a node for `CLUSTER SLOTS` and
//! `CLUSTER INFO`, over a connection of its own (a seed, else a master it knew), at
//! most once per [`CHECK_EVERY`]. It builds a fresh cluster connection from the
//! seeds, which learns the current slot map, when the set of masters differs from
//! the one it last built on, or when the cluster says `cluster_state:ok` while no
//! call at all went through for [`STUCK_AFTER`] (the client is stuck, whatever the
//! reason). Calls that are merely slow change no master, so they cost a probe a
//! second, not a reconnection.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};

/// At most one topology check per this interval.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A cluster that says it is fine while no call has gone through for this long:
/// the connection is stuck (whatever the cause), build a fresh one.
pub(crate) const STUCK_AFTER: Duration = Duration::from_secs(3);

/// Whether a failed call may mean the topology changed under the client.
pub(crate) fn is_suspicious(result: &RedisResult<Value>) -> bool {
    match result {
        Ok(Value::ServerError(e)) => matches!(
            e.kind(),
            Some(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        ),
        Ok(_) => false,
        Err(e) => is_suspicious_error(e),
    }
}

fn is_suspicious_error(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ),
        _ => e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal(),
    }
}

/// The masters in a `CLUSTER SLOTS` reply, as `host:port`: each slot range's first
/// node.
pub(crate) fn masters(reply: &Value) -> Option<BTreeSet<String>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut masters = BTreeSet::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let Some(Value::Array(node)) = fields.get(2) else {
            return None;
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = node.get(1) else {
            return None;
        };
        masters.insert(format!("{host}:{port}"));
    }
    Some(masters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, master: (&str, i64), replica: (&str, i64)) -> Value {
        let node = |(host, port): (&str, i64)| {
            Value::Array(vec![bulk(host), Value::Int(port), bulk("0123abcd")])
        };
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            node(master),
            node(replica),
        ])
    }

    #[test]
    fn masters_are_each_ranges_first_node() {
        let reply = Value::Array(vec![
            range(0, 5460, ("10.0.0.1", 6379), ("10.0.0.4", 6379)),
            range(5461, 10922, ("10.0.0.2", 6379), ("10.0.0.5", 6379)),
            range(10923, 16383, ("10.0.0.3", 6379), ("10.0.0.6", 6379)),
        ]);
        let found = masters(&reply).unwrap();
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            ["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"]
        );
        let promoted = Value::Array(vec![
            range(0, 5460, ("10.0.0.4", 6379), ("10.0.0.1", 6379)),
            range(5461, 10922, ("10.0.0.2", 6379), ("10.0.0.5", 6379)),
            range(10923, 16383, ("10.0.0.3", 6379), ("10.0.0.6", 6379)),
        ]);
        assert_ne!(
            masters(&promoted),
            masters(&reply),
            "a failover changes the set"
        );
        assert_eq!(masters(&Value::Nil), None);
    }

    #[test]
    fn timeouts_drops_and_cluster_states_are_suspicious_script_errors_are_not() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(is_suspicious(&Err(io)));
        let down = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ClusterDown),
            "CLUSTERDOWN",
        ));
        assert!(is_suspicious(&Err(down)));
        let noscript = RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT"));
        assert!(!is_suspicious(&Err(noscript)));
        assert!(!is_suspicious(&Ok(Value::Okay)));
    }
}
