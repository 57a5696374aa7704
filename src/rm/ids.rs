//! Stable identifiers for everything the engine describes.
//!
//! Peers built on s2-python and `s2energy` parse every id as a UUID, and a CEM keeps
//! plans keyed by actuator and operation-mode ids, so the ids must be UUIDs and must not
//! change between two descriptions of the same thing. They are minted the first time a
//! name is asked for and then kept for the life of the virtual RM (uuid v5 would make
//! them stable across restarts too, but the workspace builds `uuid` with v4 only).

use std::collections::HashMap;

use s2gw_core::s2::{Id, mint_id};

/// Minted ids, by the engine's own name for the thing.
#[derive(Debug, Default)]
pub(crate) struct IdBook {
    ids: HashMap<String, Id>,
}

impl IdBook {
    /// The id for `name`, minted on first use.
    pub(crate) fn get(&mut self, name: &str) -> Id {
        *self.ids.entry(name.to_string()).or_insert_with(mint_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_and_stable() {
        let mut book = IdBook::default();
        let a = book.get("frbc.actuator");
        assert!(a.as_uuid().is_some());
        assert_eq!(book.get("frbc.actuator"), a);
        assert_ne!(book.get("frbc.mode.idle"), a);
    }
}
