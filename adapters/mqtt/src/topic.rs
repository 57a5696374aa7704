//! MQTT topic filters and the checks on names the gateway puts into topics.

/// Whether `topic` matches the subscription `filter` (`+` one level, `#` the rest).
///
/// Topics starting with `$` never match a filter starting with a wildcard, as MQTT says.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// Why `name` cannot be one level of a topic, or `None` when it can.
pub(crate) fn level_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.contains(['+', '#']) {
        Some("must not contain the MQTT wildcards + or #")
    } else if name.contains('/') {
        Some("must not contain /")
    } else if name.contains('\0') {
        Some("must not contain NUL")
    } else {
        None
    }
}

/// Why `base` cannot be a topic prefix, or `None` when it can.
pub(crate) fn base_problem(base: &str) -> Option<&'static str> {
    if base.is_empty() {
        Some("must not be empty")
    } else if base.contains(['+', '#', '\0']) {
        Some("must not contain + # or NUL")
    } else if base.starts_with('/') || base.ends_with('/') || base.contains("//") {
        Some("must not start or end with / or contain an empty level")
    } else if base.starts_with('$') {
        Some("must not start with $ (reserved for the broker)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches(
            "homeassistant/device/+/config",
            "homeassistant/device/x/config"
        ));
        assert!(!matches("#", "$SYS/broker"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
    }

    #[test]
    fn names() {
        assert!(level_problem("pv-roof").is_none());
        assert!(level_problem("a/b").is_some());
        assert!(level_problem("a+").is_some());
        assert!(base_problem("s2gw").is_none());
        assert!(base_problem("home/s2gw").is_none());
        assert!(base_problem("/s2gw").is_some());
        assert!(base_problem("s2gw/#").is_some());
    }
}
