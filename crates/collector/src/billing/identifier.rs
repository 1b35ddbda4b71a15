//! Meter event identifiers: derived from what the event *is* (tenant, meter, hour,
//! revision), never drawn at random, so the retry of an intent after a crash carries
//! the identifier of the first attempt and Stripe refuses it as a duplicate if that
//! attempt landed.

use sha2::Digest;

use super::plan::HOUR_MS;

/// Stripe's limit on a meter event identifier.
pub const MAX_IDENTIFIER: usize = 100;

/// `tp-{tenant}-{meter}-{YYYYMMDD}T{HH}-{revision}`, e.g.
/// `tp-acme-requests-20261129T10-1`. Meters have no `-`, so the parts read back
/// unambiguously from the right. When that exceeds Stripe's 100 characters (tenants
/// are up to 64, meters up to 32), tenant and meter are replaced by the first 40 hex
/// digits of their SHA-256: one dash fewer, so the two forms never collide.
pub fn identifier(tenant: &str, meter: &str, hour_start_ms: i64, revision: i64) -> String {
    let hour = hour_label(hour_start_ms);
    let plain = format!("tp-{tenant}-{meter}-{hour}-{revision}");
    if plain.len() <= MAX_IDENTIFIER {
        return plain;
    }
    let digest = sha2::Sha256::digest(format!("{tenant}\n{meter}").as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("tp-{hex}-{hour}-{revision}")
}

/// `YYYYMMDDTHH` (UTC) of the hour starting at `hour_start_ms`.
fn hour_label(hour_start_ms: i64) -> String {
    let hours = hour_start_ms.div_euclid(HOUR_MS);
    let days = hours.div_euclid(24);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}", hours.rem_euclid(24))
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-29T10:00:00Z
    const H: i64 = 1_795_946_400_000;

    #[test]
    fn identifiers_name_tenant_meter_utc_hour_and_revision() {
        assert_eq!(
            identifier("acme", "requests", H, 1),
            "tp-acme-requests-20261129T10-1"
        );
        assert_eq!(
            identifier("acme", "requests", 0, 7),
            "tp-acme-requests-19700101T00-7"
        );
        assert_eq!(
            identifier("a.b-c", "search_units", H + HOUR_MS * 14, 12),
            "tp-a.b-c-search_units-20261130T00-12"
        );
    }

    #[test]
    fn the_same_event_always_gets_the_same_identifier_and_any_change_another() {
        let base = identifier("acme", "requests", H, 1);
        assert_eq!(base, identifier("acme", "requests", H, 1));
        for other in [
            identifier("acme", "requests", H, 2),
            identifier("acme", "requests", H + HOUR_MS, 1),
            identifier("acme", "exports", H, 1),
            identifier("acmf", "requests", H, 1),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn the_longest_tenants_and_meters_are_hashed_within_stripes_100_characters() {
        let tenant = "t".repeat(64);
        let meter = "m".repeat(32);
        let id = identifier(&tenant, &meter, H, i64::MAX);
        assert!(id.len() <= MAX_IDENTIFIER, "{} {id}", id.len());
        assert!(id.starts_with("tp-") && id.ends_with(&format!("-20261129T10-{}", i64::MAX)));
        assert_eq!(id.matches('-').count(), 3, "{id}");
        assert_ne!(id, identifier(&"t".repeat(63), &meter, H, i64::MAX));
        assert_ne!(id, identifier(&tenant, &"m".repeat(31), H, i64::MAX));
    }

    #[test]
    fn hour_labels_follow_the_civil_calendar() {
        // 2024-02-29T23:00Z (leap day) and 2000-03-01T00:00Z.
        assert_eq!(hour_label(1_709_247_600_000), "20240229T23");
        assert_eq!(hour_label(951_868_800_000), "20000301T00");
    }
}
