//! Free TCP ports on 127.0.0.1.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out in this process: tests run in parallel threads, and the
/// OS may offer the same just-released port twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The lowest port this scheme hands out.
const FIRST: u16 = 10_000;

/// A port nothing listens on right now, never the same one twice per process.
///
/// Taken below the kernel's ephemeral range when there is room: a port from that
/// range, free when checked, can become the source port of some outgoing connection
/// (to Redis, to the counter) before the process it was meant for binds it, and that
/// process then fails with "Address already in use" (CI saw Envoy do so).
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);
    if let Some(ephemeral_low) = ephemeral_low().filter(|low| *low > FIRST + 1_000) {
        let span = u32::from(ephemeral_low - FIRST);
        // Concurrent test processes start at different places.
        let start = std::process::id().wrapping_mul(7_919) % span;
        for i in 0..span {
            let port = FIRST + u16::try_from((start + i) % span).unwrap_or(0);
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no fresh free port after 100 tries");
}

/// The first port of the kernel's ephemeral range (Linux), if it can be read.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
