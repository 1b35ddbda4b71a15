//! Lua scripts on a cluster: every master needs the script in its cache, also a
//! replica just promoted by a failover and a node restarted empty.
//!
//! `redis::Script::invoke_async` sends `EVALSHA`; on `NOSCRIPT` it sends `SCRIPT LOAD`
//! and `EVALSHA` again. On a cluster, redis-rs fans `SCRIPT LOAD` out to every node
//! of its slot map and fails unless all of them answer, so one node that is down (or
//! a slot map not yet refreshed after a failover) would fail the consume. Instead,
//! the cluster connection remembers each script body it sees go by in a
//! `SCRIPT LOAD`, sends that load to a single node, and answers a later `NOSCRIPT` to
//! `EVALSHA` by sending `EVAL` with the body to the same slot: that loads the script
//! on exactly the node that lacked it, and runs it, in one round trip.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redis::{Arg, Cmd, RedisError, RedisResult, ServerErrorKind, Value};

/// Script bodies by SHA1, shared by every clone of a connection.
#[derive(Clone, Default)]
pub(crate) struct ScriptBodies(Arc<RwLock<HashMap<String, Arc<[u8]>>>>);

impl ScriptBodies {
    pub(crate) fn remember(&self, sha: &str, body: &[u8]) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.entry(sha.to_ascii_lowercase())
            .or_insert_with(|| Arc::from(body));
    }

    fn body(&self, sha: &[u8]) -> Option<Arc<[u8]>> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(&sha).cloned()
    }

    /// `EVAL body numkeys keys... args...` for an `EVALSHA sha numkeys ...` whose
    /// body is known; `None` otherwise.
    pub(crate) fn eval_for(&self, evalsha: &Cmd) -> Option<Cmd> {
        let mut args = evalsha.args_iter();
        let (Some(Arg::Simple(name)), Some(Arg::Simple(sha))) = (args.next(), args.next()) else {
            return None;
        };
        if !name.eq_ignore_ascii_case(b"EVALSHA") {
            return None;
        }
        let body = self.body(sha)?;
        let mut eval = redis::cmd("EVAL");
        eval.arg(&body[..]);
        for arg in args {
            match arg {
                Arg::Simple(bytes) => eval.arg(bytes),
                // A cursor or anything newer has no place in a script call.
                _ => return None,
            };
        }
        Some(eval)
    }
}

/// What a command is, as far as script handling cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScriptCommand<'a> {
    EvalSha,
    /// `SCRIPT LOAD body`.
    Load(&'a [u8]),
    Other,
}

pub(crate) fn classify(cmd: &Cmd) -> ScriptCommand<'_> {
    let mut args = cmd.args_iter();
    match (args.next(), args.next(), args.next()) {
        (Some(Arg::Simple(name)), _, _) if name.eq_ignore_ascii_case(b"EVALSHA") => {
            ScriptCommand::EvalSha
        }
        (Some(Arg::Simple(name)), Some(Arg::Simple(sub)), Some(Arg::Simple(body)))
            if name.eq_ignore_ascii_case(b"SCRIPT") && sub.eq_ignore_ascii_case(b"LOAD") =>
        {
            ScriptCommand::Load(body)
        }
        _ => ScriptCommand::Other,
    }
}

/// Whether a reply says the node does not have the script.
pub(crate) fn is_noscript(reply: &RedisResult<Value>) -> bool {
    match reply {
        Ok(Value::ServerError(e)) => e.kind() == Some(ServerErrorKind::NoScript),
        Err(e) => is_noscript_error(e),
        Ok(_) => false,
    }
}

fn is_noscript_error(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(cmd: &Cmd) -> String {
        String::from_utf8_lossy(&cmd.get_packed_command()).into_owned()
    }

    #[test]
    fn a_known_evalsha_becomes_an_eval_with_the_same_keys_and_args() {
        let bodies = ScriptBodies::default();
        let script = redis::Script::new("return KEYS[1] .. ARGV[1]");
        bodies.remember(
            &script.get_hash().to_ascii_uppercase(),
            b"return KEYS[1] .. ARGV[1]",
        );
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script.get_hash())
            .arg(1)
            .arg("tp:{017}:k")
            .arg("v");
        let eval = bodies.eval_for(&evalsha).expect("known body");
        let mut want = redis::cmd("EVAL");
        want.arg("return KEYS[1] .. ARGV[1]")
            .arg(1)
            .arg("tp:{017}:k")
            .arg("v");
        assert_eq!(packed(&eval), packed(&want));
    }

    #[test]
    fn an_unknown_script_or_another_command_is_left_alone() {
        let bodies = ScriptBodies::default();
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg("0123").arg(0);
        assert!(bodies.eval_for(&evalsha).is_none());
        assert!(bodies.eval_for(redis::cmd("GET").arg("k")).is_none());
    }

    #[test]
    fn script_commands_are_recognised_in_any_case() {
        assert_eq!(
            classify(redis::cmd("evalsha").arg("x").arg(0)),
            ScriptCommand::EvalSha
        );
        assert_eq!(
            classify(redis::cmd("script").arg("load").arg("return 1")),
            ScriptCommand::Load(b"return 1")
        );
        assert_eq!(
            classify(redis::cmd("SCRIPT").arg("FLUSH")),
            ScriptCommand::Other
        );
        assert_eq!(classify(&redis::cmd("PING")), ScriptCommand::Other);
    }

    #[test]
    fn noscript_is_recognised_as_an_error_and_nothing_else_is() {
        let noscript = RedisError::from((
            redis::ErrorKind::Server(ServerErrorKind::NoScript),
            "NOSCRIPT No matching script",
        ));
        assert!(is_noscript(&Err(noscript)));
        let other = RedisError::from((redis::ErrorKind::Io, "connection reset"));
        assert!(!is_noscript(&Err(other)));
        assert!(!is_noscript(&Ok(Value::Okay)));
    }
}
