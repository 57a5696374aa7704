//! The virtual RM's task: a thin async loop around the sans-IO [`Core`]. It waits for
//! the bus, the local switch, shutdown or the core's next deadline, hands each to the
//! core with `now`, and carries out what the core asks: bus events, device reads and
//! writes (each bounded in time), one at a time.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use s2gw_core::{BusEvent, CancellationToken, Command, Device, DeviceError};
use tokio::sync::{mpsc, watch};

use super::clock::{Clock, until};
use super::core::{Core, Output, ReadResult};
use super::{RmView, VirtualRmConfig};

/// A device call that takes longer than this counts as failed, so one hung device never
/// stalls its RM.
const DEVICE_CALL_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// The longest the loop sleeps without looking around.
const MAX_SLEEP: StdDuration = StdDuration::from_secs(60);

/// One virtual RM's I/O.
pub(crate) struct Driver {
    core: Core,
    device: Box<dyn Device>,
    bus: mpsc::Sender<BusEvent>,
    clock: Arc<dyn Clock>,
    view: watch::Sender<RmView>,
}

impl Driver {
    /// A driver for `device`, not yet running.
    pub(crate) fn new(
        config: VirtualRmConfig,
        device: Box<dyn Device>,
        bus: mpsc::Sender<BusEvent>,
        clock: Arc<dyn Clock>,
        view: watch::Sender<RmView>,
        control_allowed: bool,
    ) -> Self {
        let core = Core::new(config, device.info(), control_allowed, clock.timestamp());
        Self {
            core,
            device,
            bus,
            clock,
            view,
        }
    }

    /// Serve until `shutdown`, then release the device and return.
    ///
    /// An `async move` block rather than an `async fn`: an `async fn` keeps its by-value
    /// arguments twice in its future (rust-lang/rust#62958), here the whole core, in a
    /// future that lives as long as the device.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold `self` twice"
    )]
    pub(crate) fn run(
        mut self,
        rx: mpsc::Receiver<BusEvent>,
        gate: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move { self.serve(rx, gate, shutdown).await }
    }

    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<BusEvent>,
        mut gate: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let mut gate_open = true;
        self.core.start(self.clock.timestamp());
        self.carry_out().await;
        loop {
            let sleep = tokio::time::sleep(self.sleep_for());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = gate.changed(), if gate_open => match changed {
                    Ok(()) => {
                        let allowed = *gate.borrow_and_update();
                        self.core.set_control_allowed(allowed, self.clock.timestamp());
                    }
                    // The switch's owner is gone; the last setting stays.
                    Err(_) => gate_open = false,
                },
                event = rx.recv() => match event {
                    // The device may have been unreachable when the RM started: each new
                    // session describes it as it is now.
                    Some(BusEvent::Up) => {
                        self.core.link_up(self.device.info(), self.clock.timestamp());
                    }
                    Some(event) => self.core.bus(event, self.clock.timestamp()),
                    None => {
                        tracing::warn!("the bus went away");
                        break;
                    }
                },
                () = sleep => self.core.tick(self.clock.timestamp()),
            }
            self.carry_out().await;
        }
        self.core.stop(self.clock.timestamp());
        self.carry_out_on_the_way_out().await;
    }

    /// How long until the core's next deadline.
    fn sleep_for(&self) -> StdDuration {
        let wait = until(self.clock.timestamp(), self.core.next_deadline());
        wait.clamp(StdDuration::from_millis(1), MAX_SLEEP)
    }

    /// Do what the core asked, feeding results back, until it asks nothing more.
    async fn carry_out(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Bus(event) => {
                    if self.bus.send(event).await.is_err() {
                        tracing::debug!("bus closed; event dropped");
                    }
                }
                Output::Read => {
                    let result = self.read().await;
                    self.core.read_done(result, self.clock.timestamp());
                }
                Output::Write(write) => {
                    let result = self.apply(&write.command).await;
                    self.core.write_done(write, result, self.clock.timestamp());
                }
            }
        }
        self.publish_view();
    }

    /// At shutdown: the device writes still happen, but the bus may no longer be
    /// draining, so nothing is waited for there.
    async fn carry_out_on_the_way_out(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Bus(event) => {
                    let _ = self.bus.try_send(event);
                }
                Output::Read => {}
                Output::Write(write) => {
                    let result = self.apply(&write.command).await;
                    self.core.write_done(write, result, self.clock.timestamp());
                }
            }
        }
        self.publish_view();
    }

    async fn read(&mut self) -> ReadResult {
        match tokio::time::timeout(DEVICE_CALL_TIMEOUT, self.device.read()).await {
            Ok(result) => result,
            Err(_) => Err(DeviceError::Unreachable("read timed out".to_string())),
        }
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        match tokio::time::timeout(DEVICE_CALL_TIMEOUT, self.device.apply(command)).await {
            Ok(result) => result,
            Err(_) => Err(DeviceError::Unreachable("command timed out".to_string())),
        }
    }

    /// Publish the core's view when anything but its timestamp changed.
    fn publish_view(&self) {
        let next = self.core.view();
        self.view.send_if_modified(|view| {
            // Compared with the new timestamp lent to the old view: no copy of either.
            let stamp = std::mem::replace(&mut view.updated, next.updated);
            if *view == next {
                view.updated = stamp;
                return false;
            }
            *view = next;
            true
        });
    }
}
