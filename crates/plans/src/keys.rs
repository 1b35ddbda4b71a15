//! Redis key layout. Every key of a tenant carries the hash tag of the tenant's
//! *bucket*, and so does the bucket's usage stream: one script can then touch a
//! tenant's windows, its idempotency records and the stream in one hash slot (Redis
//! Cluster), and the collector finds every stream without scanning (there are
//! exactly [`BUCKETS`] of them).
//!
//! ```text
//! tp:{017}:log                                  usage stream of bucket 17
//! tp:{017}:acme:q:requests:minute:1795737600    units used in a window (start, unix s)
//! tp:{017}:acme:id:<consume id>                 idempotency record of one consume
//! tp:{017}:acme:seeded:1793491200:pro           windows re-seeded from the ledger
//! ```

use crate::Window;

/// Number of buckets (and usage streams). Fixed: changing it moves every tenant's
/// keys. 256 spreads evenly enough over the 16384 slots of a cluster with tens of
/// shards, and keeps the collector's stream reads to one pipelined round trip.
pub const BUCKETS: u32 = 256;

/// The bucket of a tenant: FNV-1a of the id, modulo [`BUCKETS`]. Stable across
/// processes and versions (it decides where the tenant's keys live).
pub fn bucket(tenant: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in tenant.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % BUCKETS
}

/// `tp:{NNN}:log`: the usage stream of a bucket.
pub fn stream_key(bucket: u32) -> String {
    format!("tp:{{{bucket:03}}}:log")
}

/// `tp:{NNN}:epoch`: since when (unix s) Redis has held this bucket's keys.
pub fn epoch_key(bucket: u32) -> String {
    format!("tp:{{{bucket:03}}}:epoch")
}

/// `tp:{NNN}:leases`: the bucket's open leases by expiry (a sorted set).
pub fn lease_index_key(bucket: u32) -> String {
    format!("tp:{{{bucket:03}}}:leases")
}

/// Every stream key, in bucket order.
pub fn all_stream_keys() -> Vec<String> {
    (0..BUCKETS).map(stream_key).collect()
}

/// The keys of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeys {
    /// `tp:{NNN}:TENANT`
    prefix: String,
    bucket: u32,
}

impl TenantKeys {
    /// `tenant` must be a valid tenant id (no `:`, `{` or `}`).
    pub fn new(tenant: &str) -> TenantKeys {
        let bucket = bucket(tenant);
        TenantKeys {
            prefix: format!("tp:{{{bucket:03}}}:{tenant}"),
            bucket,
        }
    }

    pub fn stream(&self) -> String {
        stream_key(self.bucket)
    }

    pub fn epoch(&self) -> String {
        epoch_key(self.bucket)
    }

    pub fn lease_index(&self) -> String {
        lease_index_key(self.bucket)
    }

    /// The marker of lease report `batch` (a report sent twice counts once).
    pub fn lease_report(&self, batch: &str) -> String {
        format!("{}:rb:{batch}", self.prefix)
    }

    /// The record of lease `id`.
    pub fn lease(&self, id: u64) -> String {
        format!("{}:lease:{id}", self.prefix)
    }

    /// Units used of `meter` in the `window` that starts at `start` (unix s).
    pub fn window(&self, meter: &str, window: Window, start: i64) -> String {
        format!("{}:q:{}", self.prefix, window_suffix(meter, window, start))
    }

    /// The window key from its suffix (as stored in an idempotency record).
    pub fn window_from_suffix(&self, suffix: &str) -> String {
        format!("{}:q:{suffix}", self.prefix)
    }

    /// The idempotency record of consume `id`.
    pub fn record(&self, id: &str) -> String {
        format!("{}:id:{id}", self.prefix)
    }

    /// Set once the tenant's long windows of the billing month starting at
    /// `month_start` were seeded from the ledger for `plan`.
    pub fn seed_marker(&self, month_start: i64, plan: &str) -> String {
        format!("{}:seeded:{month_start}:{plan}", self.prefix)
    }
}

/// `METER:WINDOW:START`, the part of a window key after the tenant.
pub fn window_suffix(meter: &str, window: Window, start: i64) -> String {
    format!("{meter}:{}:{start}", window.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_in_range() {
        // Pinned: a change here would move every tenant's keys in a running system.
        assert_eq!(bucket("acme"), 1_174_237_615 % BUCKETS);
        assert_eq!(bucket(""), 0x811c_9dc5 % BUCKETS);
        for t in ["a", "globex", "tenant-with.dots_and-dashes", "Z"] {
            assert!(bucket(t) < BUCKETS);
        }
    }

    #[test]
    fn a_tenant_keys_and_its_stream_share_one_hash_tag() {
        let k = TenantKeys::new("acme");
        let tag = format!("{{{:03}}}", bucket("acme"));
        for key in [
            k.stream(),
            k.window("requests", Window::Minute, 60),
            k.record("c1"),
            k.seed_marker(0, "pro"),
        ] {
            assert!(key.starts_with(&format!("tp:{tag}")), "{key}");
        }
        assert_eq!(
            k.window("requests", Window::Minute, 60),
            k.window_from_suffix("requests:minute:60")
        );
    }

    #[test]
    fn tenants_spread_over_the_buckets() {
        let mut used = std::collections::HashSet::new();
        for i in 0..2000 {
            used.insert(bucket(&format!("tenant-{i}")));
        }
        assert!(used.len() > 240, "{} buckets used", used.len());
    }
}
