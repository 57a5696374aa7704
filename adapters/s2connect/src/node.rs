//! The node behind each resource: a stable id and a description.

use std::path::{Path, PathBuf};

use s2gw_core::s2::connect::{NodeDescription, NodeId, Role};

use crate::store::{StoreError, dir, write_atomically};

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
    pub fn node_id(&self, device: &str) -> Result<NodeId, StoreError> {
        let path = dir(&self.state_dir).join(format!("{device}.node-id"));
        match std::fs::read_to_string(&path) {
            Ok(text) => NodeId::parse(text.trim()).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = NodeId::generate();
                write_atomically(&path, format!("{id}\n").as_bytes())?;
                Ok(id)
            }
            Err(source) => Err(StoreError::Io { path, source }),
        }
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
