//! "This resource was just paired": from the pairing server to whoever waits on it.

use tokio::sync::broadcast;

/// Devices just paired through the gateway's pairing server. The session initiator of a
/// device waits on it to dial at once instead of at its next back-off; the Home
/// Assistant mirror, to withdraw the code it shows. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PairedEvents(broadcast::Sender<String>);

impl Default for PairedEvents {
    fn default() -> Self {
        // A handful of pairings between two reads is already a lot: people pair devices
        // one by one. A receiver that lags only misses a wake-up; its next dial comes
        // at the back-off anyway.
        Self(broadcast::channel(16).0)
    }
}

impl PairedEvents {
    /// Say that `device` was just paired.
    pub fn announce(&self, device: &str) {
        // No receiver is fine: nobody is waiting.
        let _ = self.0.send(device.to_string());
    }

    /// Every announcement from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.0.subscribe()
    }

    /// Resolves at the next announcement of `device`.
    pub async fn wait_for(&self, device: &str) {
        let mut rx = self.subscribe();
        loop {
            match rx.recv().await {
                Ok(paired) if paired == device => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return std::future::pending().await;
                }
            }
        }
    }
}
