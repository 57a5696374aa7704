//! RFC 3339 timestamps for the JSON the gateway publishes.

use std::time::SystemTime;

pub(crate) use s2gw_core::clock::rfc3339;

/// Now, as RFC 3339.
pub(crate) fn now() -> String {
    rfc3339(SystemTime::now())
}
