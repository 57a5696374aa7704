//! Stable identifiers for everything the engine describes.
//!
//! Peers built on s2-python and `s2energy` parse every id as a UUID, and a CEM keeps
//! plans keyed by actuator and operation-mode ids, so the ids must be UUIDs and must not
//! change between two descriptions of the same thing — nor across a gateway restart, after
//! which a CEM resumes with the plan it had. Each id is a UUID v5 of the engine's name for
//! the thing, in a namespace of the resource's own.

use s2gw_core::s2::Id;

/// The namespace every resource's namespace is derived from (a random v4, fixed forever).
const ENGINE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1e_2a43_9b7c_4d0e_8a55_3c2d_1b0f_9e87);

/// Ids by the engine's own name for the thing.
///
/// Derived on every call, not cached: a v5 UUID is one SHA-1 of a short name (well under
/// a microsecond), asked for a few times per reading at most, and a cache cost about
/// 2 KB per resource for good.
#[derive(Debug)]
pub(crate) struct IdBook {
    namespace: uuid::Uuid,
}

impl Default for IdBook {
    fn default() -> Self {
        Self::for_resource("")
    }
}

impl IdBook {
    /// The ids of one resource: the same resource id always gives the same ids.
    pub(crate) fn for_resource(resource_id: &str) -> Self {
        Self {
            namespace: uuid::Uuid::new_v5(&ENGINE_NAMESPACE, resource_id.as_bytes()),
        }
    }

    /// The id for `name`.
    pub(crate) fn get(&self, name: &str) -> Id {
        Id::from_uuid(uuid::Uuid::new_v5(&self.namespace, name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_and_stable() {
        let book = IdBook::default();
        let a = book.get("frbc.actuator");
        assert!(a.as_uuid().is_some());
        assert_eq!(book.get("frbc.actuator"), a);
        assert_ne!(book.get("frbc.mode.idle"), a);
    }

    #[test]
    fn ids_survive_a_restart_and_differ_between_resources() {
        let a = IdBook::for_resource("r1").get("frbc.actuator");
        assert_eq!(IdBook::for_resource("r1").get("frbc.actuator"), a);
        assert_ne!(IdBook::for_resource("r2").get("frbc.actuator"), a);
    }
}
