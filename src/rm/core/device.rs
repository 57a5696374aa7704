//! The device side of the core: reads and availability, writes and their results, the
//! fail-safe release (rule 1), and what new readings make the RM report.

use std::time::Instant;

use s2gw_core::s2::{InstructionStatus, Message, Timestamp};
use s2gw_core::{BusEvent, Command, DeviceError, DeviceStatus};

use super::{Core, Output, Purpose, ReadResult, Write};
use crate::rm::LinkState;
use crate::rm::control::{Context, ControlModule};

/// Consecutive failed reads after which the device is marked unavailable.
const FAILURES_BEFORE_UNAVAILABLE: u32 = 3;

impl Core {
    /// A read finished.
    pub(crate) fn read_done(&mut self, result: ReadResult, now: Timestamp) {
        self.now = now;
        match result {
            Ok(readings) => {
                if !self.available && self.read_failures > 0 {
                    tracing::info!(resource = %self.resource_id, "device reachable again");
                }
                self.read_failures = 0;
                self.read_backoff.reset();
                self.available = !matches!(readings.status, DeviceStatus::Unavailable(_));
                self.readings = Some(readings);
                self.next_poll = self.after(self.config.poll_interval);
            }
            Err(error) => self.read_failed(&error),
        }
        if !self.announced {
            // Rule 3 holds: the device was read (or tried) before anything else.
            self.announced = true;
            self.outbox.push_back(Output::Bus(BusEvent::Up));
        }
        self.report_readings(false);
        self.drain();
    }

    /// A write finished: what its purpose says follows.
    pub(crate) fn write_done(
        &mut self,
        write: Write,
        result: Result<(), DeviceError>,
        now: Timestamp,
    ) {
        self.now = now;
        self.busy = false;
        match write.purpose {
            Purpose::Instruction(planned) => {
                self.instruction_written(*planned, &write.command, result)
            }
            Purpose::Pending => self.pending_written(&write.command, result),
        }
        // Carry on where the write stopped the core.
        self.drain();
        self.run_due();
        self.drain();
    }

    pub(super) fn request_read(&mut self) {
        // Pushed back by the result; until then nothing asks again.
        self.next_poll = self.after(self.config.poll_interval);
        self.outbox.push_back(Output::Read);
    }

    /// A failed read: retried every poll interval at first, then, once the device counts
    /// as unavailable, with a growing back-off; no values are made up meanwhile.
    fn read_failed(&mut self, error: &DeviceError) {
        self.read_failures = self.read_failures.saturating_add(1);
        if self.read_failures < FAILURES_BEFORE_UNAVAILABLE {
            tracing::warn!(resource = %self.resource_id, %error, "device read failed");
            self.next_poll = self.after(self.config.poll_interval);
            return;
        }
        if self.available || self.read_failures == FAILURES_BEFORE_UNAVAILABLE {
            tracing::error!(resource = %self.resource_id, %error, "device unavailable");
        }
        self.available = false;
        if let Some(readings) = self.readings.as_mut() {
            readings.status = DeviceStatus::Unavailable(error.to_string());
        }
        let delay = self.read_backoff.next_delay();
        self.next_poll = self.after(delay);
    }

    /// Write to the device; the core waits for the result (see the module docs). What
    /// the session queued goes out first, so an instruction is STARTED before its write.
    pub(super) fn push_write(&mut self, command: Command, purpose: Purpose) {
        self.flush();
        // Anything attempted may have changed the device, so it needs a Release later.
        self.dirty = true;
        self.busy = true;
        self.outbox
            .push_back(Output::Write(Write { command, purpose }));
    }

    /// Return the device to its autonomous behaviour (fail-safe rule 1), now, and keep
    /// trying every poll interval until it worked.
    pub(super) fn release(&mut self, why: &str) {
        if let Some(active) = self.plan.end_active() {
            tracing::info!(resource = %self.resource_id, instruction = %active.id, "instruction no longer active");
        }
        if !self.dirty {
            // Rule 3: what the gateway did not set, it does not clear.
            tracing::debug!(resource = %self.resource_id, why, "nothing to release");
            self.retry = None;
            return;
        }
        if self.busy && self.retry == Some(Command::Release) {
            // Already on its way to the device.
            return;
        }
        tracing::info!(resource = %self.resource_id, why, "fail-safe: releasing the device");
        self.retry = Some(Command::Release);
        self.retry_write();
    }

    /// Write the command that still has to reach the device (a Release or a later
    /// envelope step).
    pub(super) fn retry_write(&mut self) {
        if let Some(command) = self.retry.clone() {
            self.push_write(command, Purpose::Pending);
        }
    }

    fn pending_written(&mut self, command: &Command, result: Result<(), DeviceError>) {
        match result {
            Ok(()) => {
                // A newer command may have taken the slot meanwhile; only this one is done.
                if self.retry.as_ref() == Some(command) {
                    self.retry = None;
                }
                if *command == Command::Release {
                    self.dirty = false;
                    self.counters.releases = self.counters.releases.saturating_add(1);
                    tracing::info!(resource = %self.resource_id, "device released");
                    self.tell_modules_released();
                }
            }
            Err(error) => {
                let resource = &self.resource_id;
                self.repeats
                    .warn("device write failed", Instant::now(), || {
                        tracing::error!(
                            %resource,
                            command = %command.summary(),
                            %error,
                            "device write failed; retrying"
                        );
                    });
                self.retry_at = self.after(self.config.poll_interval);
            }
        }
    }

    fn instruction_written(
        &mut self,
        planned: crate::rm::plan::Planned,
        command: &Command,
        result: Result<(), DeviceError>,
    ) {
        match result {
            Ok(()) => {
                tracing::info!(resource = %self.resource_id, instruction = %planned.id, command = %command.summary(), "instruction carried out");
                // A newer command replaces any write still being retried.
                self.retry = None;
                self.status(planned.id, InstructionStatus::Succeeded);
                self.counters.executed = self.counters.executed.saturating_add(1);
                let now = self.now;
                let statuses = self
                    .with_selected(|module, cx| module.carried_out(cx, &planned, now))
                    .unwrap_or_default();
                self.plan.activate(planned);
                for message in statuses {
                    self.send(message);
                }
            }
            Err(error) => {
                // Rule 4: a failed write is reported, never dropped.
                tracing::error!(resource = %self.resource_id, instruction = %planned.id, %error, "device refused the instruction");
                self.counters.failed = self.counters.failed.saturating_add(1);
                self.status(planned.id, InstructionStatus::Aborted);
            }
        }
    }

    /// Every control type learns of the release; the selected one's news goes out.
    fn tell_modules_released(&mut self) {
        let now = self.now;
        let news = self.tell_every_module(|module, cx| module.released(cx, now));
        for message in news {
            self.send(message);
        }
    }

    /// Every control module hears of something, selected or not (a timer the device's own
    /// switch started runs whichever type the CEM has selected); what the selected one says
    /// back is returned.
    fn tell_every_module(
        &mut self,
        mut f: impl FnMut(&mut dyn ControlModule, &mut Context<'_>) -> Vec<Message>,
    ) -> Vec<Message> {
        let (modules, mut cx, selected) = self.modules_in_context();
        let mut news = Vec::new();
        for module in modules.iter_mut() {
            let messages = f(module.as_mut(), &mut cx);
            if Some(module.control_type()) == selected {
                news = messages;
            }
        }
        news
    }

    /// PowerMeasurement (on change, on the heartbeat, or `force`d right after a
    /// selection), then what the selected control type reports with new readings. Every
    /// control type watches the readings, reporting or not.
    pub(super) fn report_readings(&mut self, force: bool) {
        let now = self.now;
        let statuses = self.tell_every_module(|module, cx| module.readings(cx, now));
        if !matches!(self.link, LinkState::Connected(_)) || !self.available {
            return;
        }
        let Some(readings) = self.readings.clone() else {
            return;
        };
        let interval = self.config.measurement_interval;
        if let Some(measurement) = self
            .measurer
            .next(&readings, &self.info, interval, now, force)
        {
            self.send(measurement);
        }
        for message in statuses {
            self.send(message);
        }
    }
}
