//! The "CEM control allowed" switch of each device: one gate per virtual RM, which the
//! web UI sets and, with `[mqtt]`, the Home Assistant switch sets too (last one wins).

use s2gw_core::CancellationToken;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One device's switch: open (`true`) lets the CEM control the device.
#[derive(Debug, Clone)]
pub struct Gate {
    tx: watch::Sender<bool>,
}

impl Gate {
    /// An open gate.
    pub fn open() -> Self {
        Self {
            tx: watch::Sender::new(true),
        }
    }

    /// What the virtual RM watches.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Whether the CEM may control the device now.
    pub fn allowed(&self) -> bool {
        *self.tx.borrow()
    }

    /// Allow or forbid CEM control.
    pub fn set(&self, allowed: bool) {
        self.tx
            .send_if_modified(|now| std::mem::replace(now, allowed) != allowed);
    }

    /// Follow `switch` (the MQTT mirror's switch) from now on: its value at once, then
    /// every change, until `shutdown`.
    pub fn follow(
        &self,
        mut switch: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let gate = self.clone();
        gate.set(*switch.borrow_and_update());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = switch.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        gate.set(*switch.borrow_and_update());
                    }
                }
            }
        })
    }
}
