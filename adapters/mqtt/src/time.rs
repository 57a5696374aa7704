//! RFC 3339 timestamps for the JSON the gateway publishes.

use std::time::{SystemTime, UNIX_EPOCH};

use s2gw_core::s2::Timestamp;

/// `time` as RFC 3339 in UTC (`2025-01-01T12:00:00.123Z`), the format Home Assistant and
/// people read.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let stamp = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp::from_unix(
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(_) => Timestamp::UNIX_EPOCH,
    };
    stamp.to_string()
}

/// Now, as RFC 3339.
pub(crate) fn now() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(rfc3339(t).starts_with("2023-11-14T22:13:20"));
    }
}
