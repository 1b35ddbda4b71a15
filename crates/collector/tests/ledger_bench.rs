//! Ledger write cost, not a timed test. Run with:
//!
//! ```text
//! cargo test --release -p turnpike-collector --test ledger_bench -- --ignored --nocapture
//! ```
//!
//! Applies what the counter's usage stream gives a collector under leased load (one
//! `Counted` fact per request, ids of a lease and its sequence, rounds of 200 to 799
//! facts) to an SQLite ledger file (`synchronous=FULL`) and to PostgreSQL (default
//! durability), and prints the time per fact as the ledger grows: this process's CPU
//! (SQLite runs in it) and the wall clock (PostgreSQL's CPU is its own).

mod support;

use std::time::Instant;

use support::{Durability, TestDb};
use turnpike_collector::merge::Fact;

/// Rounds of 200 to 799 facts (a collector's rounds vary with the load), 500 on average.
const ROUNDS: usize = 600;
const FACTS: usize = 500 * ROUNDS;

fn round_len(k: usize) -> usize {
    200 + (k * 7_919) % 600
}

fn cpu_us() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

fn round(first: usize, len: usize) -> Vec<Fact> {
    // A lease of 100 requests is reported as one entry; ids are the lease's 32 hex
    // digits and a 16-digit sequence, as the filter writes them.
    (first..first + len)
        .map(|n| {
            let lease = format!(
                "{:032x}",
                0x0d83_53d8_196a_3f5c_u128 * (n / 100 + 1) as u128
            );
            Fact::Counted {
                id: format!("{lease}{:016x}", n % 100),
                tenant: format!("tenant-{}", n % 7),
                time_ms: 1_796_045_029_994 + (n / 10) as i64,
                plan: "bench".into(),
                meters: vec![("requests".into(), 1)],
                lease: Some(format!("{}", 5_013_881_192_677_307_u64 + (n / 100) as u64)),
            }
        })
        .collect()
}

async fn measure(db: &TestDb, label: &str) {
    let ledger = db.ledger().await;
    let (mut cpu, mut wall, mut first, mut since) = (cpu_us(), Instant::now(), 0, 0);
    for k in 0..ROUNDS {
        let len = round_len(k);
        let facts = round(first, len);
        let applied = ledger
            .apply(&facts, 1_796_045_030_000)
            .await
            .expect("apply");
        assert_eq!(applied.inserted, len as u64);
        first += len;
        since += len;
        if (k + 1) % 100 == 0 {
            let now_cpu = cpu_us();
            println!(
                "{label:<10} rows {first:>7}: {:.1} µs CPU per fact in this process, {:.1} µs wall",
                (now_cpu - cpu) / since as f64,
                wall.elapsed().as_secs_f64() * 1e6 / since as f64
            );
            (cpu, wall, since) = (now_cpu, Instant::now(), 0);
        }
    }
    assert!(first >= FACTS / 2);
    assert_eq!(db.count().await as usize, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
async fn ledger_write_cost() {
    measure(&TestDb::sqlite(), "sqlite").await;
    measure(&TestDb::postgres_with(Durability::Durable), "postgres").await;
}
