//! Session initiation before every dial of an `s2connect` link.

use std::path::{Path, PathBuf};

use s2gw_core::Secret;
use s2gw_core::s2::connect::{NodeId, Session, Timestamp, TlsClient};
use s2gw_ws::{DialSource, DialTarget};
use tracing::info;

use crate::events::PairedEvents;
use crate::node::NodeStore;
use crate::store::{PairingFile, StoreError};

/// A [`DialSource`] for one resource: reads its pairing from the state directory, runs
/// `initiateSession` / `confirmAccessToken` with the paired CEM, stores the rotated
/// access token and returns the WebSocket URL with its single-use token.
///
/// The file is read before every initiation, so `s2gw pair` and `s2gw unpair` take
/// effect at the next session while the daemon runs.
#[derive(Debug)]
pub struct Initiator {
    device: String,
    nodes: NodeStore,
    file: PairingFile,
    paired: Option<PairedEvents>,
}

impl Initiator {
    /// The initiator of `device` under `state_dir`.
    ///
    /// Nothing is read yet: an unreadable or corrupt file fails each initiation with an
    /// error naming it (a failed dial of this link only; the other links run on).
    pub fn new(state_dir: &Path, device: &str) -> Self {
        Self {
            device: device.to_string(),
            nodes: NodeStore::new(state_dir),
            file: PairingFile::new(state_dir, device),
            paired: None,
        }
    }

    /// Dial at once when the gateway's pairing server pairs this device (instead of at
    /// the link's next back-off).
    pub fn with_paired_events(mut self, paired: PairedEvents) -> Self {
        self.paired = Some(paired);
        self
    }

    /// This resource's node id (minted and kept the first time).
    pub fn node_id(&self) -> Result<NodeId, StoreError> {
        self.nodes.node_id(&self.device)
    }

    /// The pairing file it reads.
    pub fn file(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }

    async fn initiate(&self) -> Result<DialTarget, String> {
        let node_id = self.node_id().map_err(|e| e.to_string())?;
        let pairings = self.file.load().map_err(|e| e.to_string())?;
        let Some(pairing) = pairings.into_iter().next() else {
            return Err(format!(
                "{} is not paired with a CEM (run `s2gw pair {} --cem <url> --code <code>`)",
                self.device, self.device
            ));
        };
        let (policy, pinned) = crate::trust::policy(&pairing).await?;
        if let Some(pinned) = pinned {
            self.file
                .update(node_id, pairing.cem.id, |p| p.tls = pinned)
                .map_err(|e| e.to_string())?;
            info!(device = %self.device, cem = %pairing.cem.id, "pinned the CEM's CA certificate");
        }
        let tls = TlsClient::new(&policy).map_err(|e| e.to_string())?.config();
        let mut session = Session::new(
            &pairing.initiate_session_url,
            &policy,
            node_id,
            pairing.cem.id,
            pairing.tokens(),
        )
        .map_err(|e| e.to_string())?;
        let result = session.initiate(Timestamp::now()).await;
        // Whatever happened, the store may have rotated: keep it, unless an unpair
        // removed the pairing meanwhile.
        let tokens = session.tokens().clone();
        let still_paired = self
            .file
            .update(node_id, pairing.cem.id, |p| {
                p.set_tokens(&tokens, Timestamp::now())
            })
            .map_err(|e| e.to_string())?;
        let credentials = result.map_err(|e| {
            format!(
                "session initiation with CEM {} refused: {e}",
                pairing.cem.id
            )
        })?;
        if !still_paired {
            return Err(format!(
                "{} was unpaired during session initiation",
                self.device
            ));
        }
        info!(
            device = %self.device,
            cem = %pairing.cem.id,
            url = %credentials.websocket_url,
            "session initiated"
        );
        Ok(DialTarget {
            url: credentials.websocket_url.clone(),
            bearer: Secret::new(credentials.websocket_token.as_str()),
            tls: Some(tls),
        })
    }
}

#[async_trait::async_trait]
impl DialSource for Initiator {
    async fn next_dial(&self) -> Result<DialTarget, String> {
        self.initiate().await
    }

    async fn changed(&self) {
        match &self.paired {
            Some(paired) => paired.wait_for(&self.device).await,
            None => std::future::pending().await,
        }
    }
}
