//! From advertisements and characteristic values to [`Readings`], and from commands to
//! GATT writes: the adapter's logic, kept apart from the radio so it is tested without
//! one.

use std::time::{Duration, Instant};

use s2gw_core::device::{ControlCapability, DeviceKind, ModeSpec};
use s2gw_core::{Command, DeviceError, DeviceStatus, Readings};
use uuid::Uuid;

use crate::bthome::Packet;
use crate::config::{BleConnection, BleProfile, BleSource, GattMode, ReadingField, parse_uuid};
use crate::gatt::Template;

/// Drops repeated and replayed BTHome packets.
///
/// Devices repeat each advertisement several times and BlueZ may report it more than
/// once, so a packet id seen a moment ago is the same measurement: counting it twice
/// would be harmless for power but not for events. Mirrors the reference decoder: a
/// packet is new when its id is up to 63 ahead of the last (wrapping at 256), or when
/// more than [`PacketFilter::WINDOW`] passed. An encrypted packet whose counter went
/// backwards (other than a restart near zero) is a replay and dropped.
#[derive(Debug, Clone, Default)]
pub struct PacketFilter {
    last_id: Option<u8>,
    last_at: Option<Instant>,
    last_counter: Option<u32>,
}

impl PacketFilter {
    /// After this long, the same packet id counts as a new packet.
    pub const WINDOW: Duration = Duration::from_secs(4);
    /// A counter below this after a higher one is a device restart, not a replay.
    const COUNTER_RESTART: u32 = 100;

    /// Whether `packet`, received at `now`, is new; remembers it if so.
    pub fn accept(&mut self, packet: &Packet, now: Instant) -> bool {
        if let (Some(new), Some(last)) = (packet.counter, self.last_counter)
            && new < last
            && new >= Self::COUNTER_RESTART
        {
            return false;
        }
        let fresh = match (packet.packet_id(), self.last_id, self.last_at) {
            (Some(new), Some(last), Some(at)) if now.duration_since(at) <= Self::WINDOW => {
                let ahead = new.wrapping_sub(last);
                ahead != 0 && ahead < 64
            }
            _ => true,
        };
        if fresh {
            self.last_id = packet.packet_id();
            self.last_at = Some(now);
            self.last_counter = packet.counter.or(self.last_counter);
        }
        fresh
    }
}

/// The latest values of one device and when they arrived.
#[derive(Debug, Clone)]
pub struct SensorState {
    stale_after: Duration,
    modes: Vec<GattMode>,
    reads_power: bool,
    power_w: Option<f64>,
    energy_wh: Option<f64>,
    soc: Option<f64>,
    state: Option<f64>,
    updated: Option<Instant>,
    problem: Option<String>,
}

impl SensorState {
    /// Empty state for a device described by `profile` and `connection`.
    pub fn new(profile: &BleProfile, connection: &BleConnection) -> Self {
        let reads_power = profile.source == BleSource::Bthome
            || profile
                .readings
                .iter()
                .any(|r| r.field == ReadingField::PowerW);
        Self {
            stale_after: profile.stale_after(connection),
            modes: profile.modes.clone(),
            reads_power,
            power_w: None,
            energy_wh: None,
            soc: None,
            state: None,
            updated: None,
            problem: None,
        }
    }

    /// Take the values of a (new, see [`PacketFilter`]) BTHome packet. Energy arrives in
    /// kWh and is kept in Wh.
    pub fn apply_bthome(&mut self, packet: &Packet, now: Instant) {
        let power = packet.number("power");
        let energy = packet.number("energy").map(|kwh| kwh * 1000.0);
        if power.is_none() && energy.is_none() {
            return;
        }
        self.power_w = power.or(self.power_w);
        self.energy_wh = energy.or(self.energy_wh);
        self.updated = Some(now);
        self.problem = None;
    }

    /// Take one characteristic's value (already scaled).
    pub fn apply_value(&mut self, field: ReadingField, value: f64, now: Instant) {
        let slot = match field {
            ReadingField::PowerW => &mut self.power_w,
            ReadingField::EnergyWh => &mut self.energy_wh,
            ReadingField::Soc => &mut self.soc,
            ReadingField::State => &mut self.state,
        };
        *slot = Some(value);
        self.updated = Some(now);
        self.problem = None;
    }

    /// Remember why the last attempt to get values failed; it becomes the reason of the
    /// next unavailable reading.
    pub fn note_problem(&mut self, problem: impl Into<String>) {
        self.problem = Some(problem.into());
    }

    /// Whether there are values younger than the staleness limit.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.updated
            .is_some_and(|u| now.saturating_duration_since(u) <= self.stale_after)
    }

    /// Why the last attempt to get values failed, if it did.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The mode the `state` reading says the device is in.
    pub fn active_mode(&self) -> Option<&GattMode> {
        let state = self.state?;
        self.modes.iter().find(|m| m.state == Some(state))
    }

    /// The last `state` value read.
    pub fn state_value(&self) -> Option<f64> {
        self.state
    }

    /// The readings at `now`. Without fresh values the status is
    /// [`DeviceStatus::Unavailable`] and `power_w` is NaN: nothing is made up.
    pub fn readings(&self, now: Instant) -> Readings {
        match self.unavailable_reason(now) {
            Some(reason) => Readings {
                power_w: f64::NAN,
                status: DeviceStatus::Unavailable(reason),
                ..Readings::default()
            },
            None => self.fresh_readings(),
        }
    }

    fn unavailable_reason(&self, now: Instant) -> Option<String> {
        let Some(updated) = self.updated else {
            return Some(
                self.problem
                    .clone()
                    .unwrap_or_else(|| "no data from the device yet".into()),
            );
        };
        let age = now.saturating_duration_since(updated);
        if age > self.stale_after {
            let mut reason = format!(
                "no data for {} s (stale after {} s)",
                age.as_secs(),
                self.stale_after.as_secs()
            );
            if let Some(p) = &self.problem {
                reason.push_str(&format!(": {p}"));
            }
            return Some(reason);
        }
        let power = self.power_w.or_else(|| self.declared_power());
        power
            .is_none()
            .then(|| "the device has not reported its power yet".into())
    }

    /// A relay without a power meter: the power its profile declares for the current
    /// mode (the same number the CEM was told in the OMBC description).
    fn declared_power(&self) -> Option<f64> {
        if self.reads_power {
            return None;
        }
        self.active_mode().map(|m| m.max_w)
    }

    fn fresh_readings(&self) -> Readings {
        Readings {
            power_w: self
                .power_w
                .or_else(|| self.declared_power())
                .unwrap_or(f64::NAN),
            phase_power_w: None,
            energy_wh: self.energy_wh,
            soc: self.soc,
            status: DeviceStatus::Ok,
            active: self.active_mode().map(|m| Command::SetMode {
                mode: m.name.clone(),
            }),
            ..Readings::default()
        }
    }
}

/// The kind a BLE device reports: a meter for measurement-only devices, a load for ones
/// with modes (a relay switches something that consumes).
pub fn device_kind(profile: &BleProfile) -> DeviceKind {
    if profile.modes.is_empty() {
        DeviceKind::Meter
    } else {
        DeviceKind::Load
    }
}

/// What the device can be told to do: OMBC when the profile has modes, and always
/// measurements.
pub fn capabilities(profile: &BleProfile) -> Vec<ControlCapability> {
    let mut out = Vec::new();
    if !profile.modes.is_empty() {
        let modes = profile
            .modes
            .iter()
            .map(|m| ModeSpec::by_name(&m.name, m.label.as_deref(), m.min_w, m.max_w, m.default))
            .collect();
        out.push(ControlCapability::OperationModes {
            modes,
            min_on_s: profile.min_on_s.unwrap_or(0),
            min_off_s: profile.min_off_s.unwrap_or(0),
        });
    }
    out.push(ControlCapability::NotControllable);
    out
}

/// One GATT write that carries out a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The mode entered.
    pub mode: String,
    /// The characteristic written.
    pub characteristic: Uuid,
    /// The bytes.
    pub payload: Vec<u8>,
    /// Whether the device acknowledges the write.
    pub with_response: bool,
    /// The `state` value that confirms the write, where the profile says.
    pub expect_state: Option<f64>,
}

/// The write for `command`: a mode's payload for `SetMode`, the default mode's for
/// `Release` (the fail-safe); anything else is refused.
pub fn write_for(profile: &BleProfile, command: &Command) -> Result<Write, DeviceError> {
    let mode = match command {
        Command::SetMode { mode } => profile.modes.iter().find(|m| &m.name == mode),
        Command::Release => profile.modes.iter().find(|m| m.default),
        other => {
            return Err(DeviceError::Refused(format!(
                "a BLE device with operation modes cannot do `{}`",
                other.summary()
            )));
        }
    };
    let mode = mode.ok_or_else(|| {
        DeviceError::Refused(format!(
            "no such mode for this device: {}",
            command.summary()
        ))
    })?;
    let characteristic = parse_uuid(&mode.characteristic).ok_or_else(|| {
        DeviceError::Refused(format!("mode `{}`: bad characteristic UUID", mode.name))
    })?;
    let payload = Template::parse(&mode.payload)
        .and_then(|t| t.render(None))
        .map_err(|e| DeviceError::Refused(format!("mode `{}`: {e}", mode.name)))?;
    Ok(Write {
        mode: mode.name.clone(),
        characteristic,
        payload,
        with_response: mode.with_response.unwrap_or(true),
        expect_state: mode.state,
    })
}

#[cfg(test)]
mod tests;
