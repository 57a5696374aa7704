//! The node behind each resource: a stable id and a description.

use std::path::{Path, PathBuf};

use s2gw_core::s2::connect::{NodeDescription, NodeId, Role};

use crate::store::{StoreError, create_atomically, dir};

/// What the gateway knows of a resource, for its node description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The config's device id (names the state files).
    pub device: String,
    /// The device's name, shown to the user as the node's user-defined name.
    pub name: String,
    /// Brand: the profile's manufacturer.
    pub brand: String,
    /// Model: the profile's model.
    pub model: String,
    /// Type: what kind of device (battery, EV charger, …).
    pub kind: String,
}

/// The id in `path`, or `None` when there is no such file.
fn read_id(path: &Path) -> Result<Option<NodeId>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => NodeId::parse(text.trim())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Node ids, one per resource, minted once: `<state_dir>/s2connect/<device>.node-id`.
#[derive(Debug, Clone)]
pub struct NodeStore {
    state_dir: PathBuf,
}

impl NodeStore {
    /// Node ids under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// The node id of `device`, minting and keeping one the first time.
    ///
    /// Minting never replaces an id another thread or process minted at the same moment
    /// (the session initiator and the pairing server both ask at start-up): the first
    /// one written is the one every caller gets.
    pub fn node_id(&self, device: &str) -> Result<NodeId, StoreError> {
        let path = dir(&self.state_dir).join(format!("{device}.node-id"));
        if let Some(id) = read_id(&path)? {
            return Ok(id);
        }
        let id = NodeId::generate();
        if create_atomically(&path, format!("{id}\n").as_bytes())? {
            return Ok(id);
        }
        read_id(&path)?.ok_or_else(|| StoreError::Corrupt {
            path,
            reason: "vanished right after it was created".into(),
        })
    }

    /// The node description of `spec`: role RM, with its stable id.
    pub fn describe(&self, spec: &NodeSpec) -> Result<NodeDescription, StoreError> {
        Ok(NodeDescription {
            id: self.node_id(&spec.device)?,
            brand: spec.brand.clone(),
            logo_url: None,
            kind: spec.kind.clone(),
            model_name: spec.model.clone(),
            user_defined_name: Some(spec.name.clone()),
            role: Role::Rm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_asks_all_get_the_one_id_that_was_kept() {
        let state = tempfile::tempdir().unwrap();
        let store = NodeStore::new(state.path());
        let ids: Vec<NodeId> = std::thread::scope(|scope| {
            let asks: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| store.node_id("battery").unwrap()))
                .collect();
            asks.into_iter().map(|a| a.join().unwrap()).collect()
        });
        let kept = store.node_id("battery").unwrap();
        assert!(ids.iter().all(|id| *id == kept), "{ids:?} vs {kept}");
        let names: Vec<String> = std::fs::read_dir(dir(state.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["battery.node-id"], "no temporary file left");
    }
}
