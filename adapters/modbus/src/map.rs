//! A device described by an explicit register map: chargers, heat pumps, meters.

use std::time::Duration;

use async_trait::async_trait;
use s2gw_core::device::plausible_soc;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind, ModeSpec};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};
use tokio::time::Instant;

use crate::config::{ChargerSpec, ModbusProfile, RegisterSpec, Source, WriteSpec};
use crate::error::ModbusError;
use crate::point::{Point, PollGroup, Poller, Unit, WriteFc};
use crate::value::{ByteOrder, Value, WordOrder};

const DEFAULT_STEPS_A: [f64; 3] = [6.0, 10.0, 16.0];
/// Lets a float setpoint equal to the maximum pass despite rounding.
const AMPS_EPSILON: f64 = 1e-9;

/// Converts the profile's registers to points with 0-based addresses.
pub(crate) fn points(profile: &ModbusProfile) -> Vec<Point> {
    let base = u32::from(profile.address_base.unwrap_or(0));
    let used = reading_names(profile);
    let addr =
        |spec: &RegisterSpec| spec.address.saturating_sub(base).min(u32::from(u16::MAX)) as u16;
    profile
        .registers
        .iter()
        .map(|(name, spec)| Point {
            name: name.clone(),
            table: spec.table,
            address: addr(spec),
            ty: spec.value_type(),
            length: spec.length.unwrap_or(1),
            word_order: spec
                .word_order
                .or(profile.word_order)
                .unwrap_or(WordOrder::HighFirst),
            byte_order: spec
                .byte_order
                .or(profile.byte_order)
                .unwrap_or(ByteOrder::Big),
            sentinels: profile.sentinels.unwrap_or_default(),
            not_implemented: spec.not_implemented.clone(),
            scale: spec.scale.unwrap_or(1.0),
            scale_register: spec
                .scale_register
                .as_ref()
                .and_then(|sf| profile.registers.get(sf))
                .map(addr),
            // A register nobody reads is written only (and read back after writing).
            group: spec.poll.unwrap_or(if used.contains(name) {
                PollGroup::Fast
            } else {
                PollGroup::Never
            }),
        })
        .collect()
}

fn reading_names(profile: &ModbusProfile) -> Vec<String> {
    let r = &profile.readings;
    [&r.power, &r.energy, &r.soc, &r.status]
        .into_iter()
        .flatten()
        .cloned()
        .chain(r.phase_power.iter().flatten().cloned())
        .collect()
}

/// A charger current setting.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Setting {
    amps: f64,
    phases: u8,
}

/// The command's parameters that writes draw on.
#[derive(Debug, Default, Clone, Copy)]
struct Params {
    amps: Option<f64>,
    phases: Option<u8>,
    watts: Option<f64>,
    min_w: Option<f64>,
    max_w: Option<f64>,
    /// What 100 % of a production limit is, W (`-envelope.min_w`).
    production_w: Option<f64>,
}

impl Params {
    fn get(&self, source: Source) -> Option<f64> {
        match source {
            Source::Amps => self.amps,
            Source::Phases => self.phases.map(f64::from),
            Source::Watts => self.watts,
            Source::MaxW => self.max_w,
            Source::MinW => self.min_w,
            Source::ProductionLimitW => self.min_w.map(|w| (-w).max(0.0)),
            Source::ProductionLimitPct => self
                .min_w
                .zip(self.production_w)
                .map(|(w, full)| ((-w).max(0.0) / full * 100.0).clamp(0.0, 100.0)),
        }
    }

    fn current(s: Setting) -> Params {
        Params {
            amps: Some(s.amps),
            phases: Some(s.phases),
            ..Params::default()
        }
    }
}

/// One write ready to go out, kept for heartbeat re-writes.
#[derive(Debug, Clone)]
struct Pending {
    register: String,
    words: Vec<u16>,
    fc: WriteFc,
    verify: bool,
    /// Skipped when the device already holds `words` (`when_different`).
    when_different: bool,
}

/// A register-map device (see the crate docs for the profile schema).
pub struct MapDevice {
    id: String,
    profile: ModbusProfile,
    poller: Poller,
    active: Option<Command>,
    last_writes: Vec<Pending>,
    refresh_at: Option<Instant>,
}

impl MapDevice {
    /// A device on `unit`; nothing is sent until the first read.
    pub fn new(id: &str, unit: Unit, profile: &ModbusProfile) -> MapDevice {
        MapDevice {
            id: id.to_string(),
            poller: Poller::new(unit, points(profile), profile.coalescing()),
            profile: profile.clone(),
            active: None,
            last_writes: Vec::new(),
            refresh_at: None,
        }
    }

    /// The poller (tests and benchmarks look at request counts through it).
    pub fn poller_mut(&mut self) -> &mut Poller {
        &mut self.poller
    }

    fn kind(&self) -> DeviceKind {
        let p = &self.profile;
        if p.charger.is_some() {
            DeviceKind::EvCharger
        } else if !p.modes.is_empty() {
            DeviceKind::HeatPump
        } else if p.readings.soc.is_some() {
            DeviceKind::Battery
        } else if p.envelope.is_some_and(|e| e.min_w < 0.0) {
            DeviceKind::PvInverter
        } else {
            DeviceKind::Meter
        }
    }

    fn status(&self) -> DeviceStatus {
        let r = &self.profile.readings;
        let Some(name) = &r.status else {
            return DeviceStatus::Ok;
        };
        match self.poller.value(name) {
            Some(Value::Text(t)) if r.fault_prefixes.iter().any(|p| t.starts_with(p.as_str())) => {
                DeviceStatus::Fault(format!("state {t}"))
            }
            Some(v) if v.number().is_some_and(|n| r.fault_values.contains(&n)) => {
                DeviceStatus::Fault(format!("state {v}"))
            }
            _ => DeviceStatus::Ok,
        }
    }

    fn readings(&self) -> Readings {
        let r = &self.profile.readings;
        let num = |n: &Option<String>| n.as_ref().and_then(|n| self.poller.number(n));
        let phase_power_w = r.phase_power.as_ref().and_then(|[a, b, c]| {
            Some([
                self.poller.number(a)?,
                self.poller.number(b)?,
                self.poller.number(c)?,
            ])
        });
        let (power_w, status) = match num(&r.power) {
            Some(p) => (p, self.status()),
            None => (
                0.0,
                DeviceStatus::Unavailable("power register not readable".to_string()),
            ),
        };
        Readings {
            power_w,
            phase_power_w,
            energy_wh: num(&r.energy),
            soc: plausible_soc(num(&r.soc)),
            status,
            active: self.active.clone(),
            ..Readings::default()
        }
    }

    // --------------------------------------------------------------------------------
    // Charger logic
    // --------------------------------------------------------------------------------

    fn charger(&self) -> Option<&ChargerSpec> {
        self.profile.charger.as_ref()
    }

    fn volts(ch: &ChargerSpec) -> f64 {
        ch.voltage_v.unwrap_or(230.0)
    }

    fn default_setting(ch: &ChargerSpec) -> Setting {
        Setting {
            amps: ch.max_current_a,
            phases: ch.phases.unwrap_or(3),
        }
    }

    fn steps(ch: &ChargerSpec) -> Vec<Setting> {
        let wired = ch.phases.unwrap_or(3);
        let mut amps: Vec<f64> = ch
            .steps_a
            .clone()
            .unwrap_or_else(|| DEFAULT_STEPS_A.to_vec())
            .into_iter()
            .filter(|a| *a < ch.max_current_a && *a >= ch.min_current_a.unwrap_or(6.0))
            .collect();
        amps.push(ch.max_current_a);
        let phase_set: &[u8] = if wired == 3 && ch.phase_switching {
            &[1, 3]
        } else if wired == 3 {
            &[3]
        } else {
            &[1]
        };
        let mut steps = vec![Setting {
            amps: 0.0,
            phases: wired,
        }];
        for &phases in phase_set {
            steps.extend(amps.iter().map(|&amps| Setting { amps, phases }));
        }
        let power = |s: &Setting| s.amps * f64::from(s.phases);
        steps.sort_by(|a, b| power(a).total_cmp(&power(b)));
        steps
    }

    fn step_name(s: Setting) -> String {
        if s.amps <= 0.0 {
            "off".to_string()
        } else {
            format!("{:.0}A-{}p", s.amps, s.phases)
        }
    }

    fn check_current(ch: &ChargerSpec, amps: f64, phases: u8) -> Result<Setting, DeviceError> {
        let wired = ch.phases.unwrap_or(3);
        let min = ch.min_current_a.unwrap_or(6.0);
        let refuse = |why: String| Err(DeviceError::Refused(why));
        if phases != 1 && phases != 3 {
            return refuse(format!("{phases} phases: must be 1 or 3"));
        }
        if phases != wired && !ch.phase_switching {
            return refuse(format!(
                "{phases} phases asked; the charger runs on {wired} and cannot switch"
            ));
        }
        if phases > wired {
            return refuse(format!(
                "{phases} phases asked; the charger is wired for {wired}"
            ));
        }
        if !amps.is_finite() || amps < 0.0 || (amps > 0.0 && amps < min) {
            return refuse(format!(
                "current {amps} A: must be 0 (off) or at least {min} A"
            ));
        }
        if amps > ch.max_current_a + AMPS_EPSILON {
            return refuse(format!(
                "current {amps} A is above the maximum of {} A",
                ch.max_current_a
            ));
        }
        Ok(Setting { amps, phases })
    }

    /// The most powerful step within `max_w`; "off" when not even the minimum fits.
    fn step_within(ch: &ChargerSpec, max_w: Option<f64>) -> Setting {
        let Some(max_w) = max_w.filter(|w| !w.is_nan()) else {
            return Self::default_setting(ch);
        };
        let volts = Self::volts(ch);
        Self::steps(ch)
            .into_iter()
            .rev()
            .find(|s| s.amps * f64::from(s.phases) * volts <= max_w)
            .unwrap_or(Setting {
                amps: 0.0,
                phases: ch.phases.unwrap_or(3),
            })
    }

    fn mode_specs(&self) -> Vec<ModeSpec> {
        if let Some(ch) = self.charger() {
            let volts = Self::volts(ch);
            let default = Self::default_setting(ch);
            return Self::steps(ch)
                .into_iter()
                .map(|s| {
                    let w = s.amps * f64::from(s.phases) * volts;
                    ModeSpec {
                        name: Self::step_name(s),
                        label: if s.amps <= 0.0 {
                            "Charging off".into()
                        } else {
                            format!("{:.0} A on {} phase(s)", s.amps, s.phases)
                        },
                        min_w: w,
                        max_w: w,
                        command: Command::SetCurrent {
                            amps: s.amps,
                            phases: s.phases,
                        },
                        is_default: s == default,
                    }
                })
                .collect();
        }
        self.profile
            .modes
            .iter()
            .map(|m| ModeSpec::by_name(&m.name, m.label.as_deref(), m.min_w, m.max_w, m.default))
            .collect()
    }

    // --------------------------------------------------------------------------------
    // Commands → writes
    // --------------------------------------------------------------------------------

    /// The writes a command becomes, with the parameters they draw on.
    fn plan(&self, command: &Command) -> Result<(Vec<WriteSpec>, Params), DeviceError> {
        let c = &self.profile.commands;
        let refuse = |why: &str| Err(DeviceError::Refused(why.to_string()));
        match command {
            Command::Release => self.release_plan(),
            Command::LimitPower { min_w, max_w } if !c.limit_power.is_empty() => Ok((
                c.limit_power.clone(),
                Params {
                    min_w: *min_w,
                    max_w: *max_w,
                    production_w: self.profile.envelope.map(|e| -e.min_w).filter(|w| *w > 0.0),
                    ..Params::default()
                },
            )),
            Command::LimitPower { max_w, .. } => match self.charger() {
                // A charger cannot make a car draw more, so only the upper bound matters.
                Some(ch) => Ok((
                    c.set_current.clone(),
                    Params::current(Self::step_within(ch, *max_w)),
                )),
                None => refuse("this profile maps no power limit"),
            },
            Command::SetPower { watts } if !c.set_power.is_empty() => Ok((
                c.set_power.clone(),
                Params {
                    watts: Some(*watts),
                    ..Params::default()
                },
            )),
            Command::SetPower { .. } => refuse("this profile maps no power setpoint"),
            Command::SetCurrent { amps, phases } => match self.charger() {
                Some(ch) => Ok((
                    c.set_current.clone(),
                    Params::current(Self::check_current(ch, *amps, *phases)?),
                )),
                None => refuse("this device takes no charging current"),
            },
            Command::SetMode { mode } => self.mode_plan(mode),
            Command::StartProgramme { .. }
            | Command::Pause
            | Command::Resume
            | Command::SetActuator { .. } => refuse("this profile maps no appliance commands"),
        }
    }

    fn release_plan(&self) -> Result<(Vec<WriteSpec>, Params), DeviceError> {
        let c = &self.profile.commands;
        if !c.release.is_empty() {
            return Ok((c.release.clone(), Params::default()));
        }
        if let Some(ch) = self.charger() {
            return Ok((
                c.set_current.clone(),
                Params::current(Self::default_setting(ch)),
            ));
        }
        if let Some(m) = self.profile.modes.iter().find(|m| m.default) {
            return Ok((m.writes.clone(), Params::default()));
        }
        // Nothing was ever set on a device without commands: nothing to undo.
        Ok((Vec::new(), Params::default()))
    }

    fn mode_plan(&self, mode: &str) -> Result<(Vec<WriteSpec>, Params), DeviceError> {
        if let Some(m) = self.profile.modes.iter().find(|m| m.name == mode) {
            return Ok((m.writes.clone(), Params::default()));
        }
        if let Some(ch) = self.charger()
            && let Some(s) = Self::steps(ch)
                .into_iter()
                .find(|s| Self::step_name(*s) == mode)
        {
            return Ok((
                self.profile.commands.set_current.clone(),
                Params::current(s),
            ));
        }
        Err(DeviceError::Refused(format!("unknown mode {mode:?}")))
    }

    fn encode(&self, writes: &[WriteSpec], params: Params) -> Result<Vec<Pending>, ModbusError> {
        let off = params.amps == Some(0.0);
        writes
            .iter()
            .filter(|w| !(off && w.skip_when_off))
            .map(|w| {
                let value = match (w.value, w.from, w.on.zip(w.off)) {
                    (Some(v), _, _) => v,
                    (None, Some(src), _) => params.get(src).or(w.default).ok_or_else(|| {
                        ModbusError::Invalid(format!(
                            "{}: the command gives no {src:?}",
                            w.register
                        ))
                    })?,
                    (None, None, Some((on, off_value))) if params.amps.is_some() => {
                        if off {
                            off_value
                        } else {
                            on
                        }
                    }
                    (None, None, _) => {
                        return Err(ModbusError::Invalid(format!("{}: no value", w.register)));
                    }
                };
                let spec = self.profile.registers.get(&w.register);
                Ok(Pending {
                    register: w.register.clone(),
                    words: self.poller.encode(&w.register, value)?,
                    fc: spec.and_then(|s| s.write).unwrap_or_default(),
                    verify: spec.and_then(|s| s.verify).unwrap_or(true),
                    when_different: w.when_different,
                })
            })
            .collect()
    }

    async fn send(&mut self, writes: &[Pending]) -> Result<(), ModbusError> {
        for w in writes {
            if w.when_different && self.holds(w).await? {
                continue;
            }
            self.poller
                .write_raw(&w.register, &w.words, w.fc, w.verify)
                .await?;
        }
        Ok(())
    }

    /// Whether the device holds `w`'s value already, read now.
    async fn holds(&mut self, w: &Pending) -> Result<bool, ModbusError> {
        self.poller.refresh(&[w.register.as_str()]).await?;
        let holds = self.poller.raw(&w.register).as_deref() == Some(w.words.as_slice());
        if holds {
            tracing::debug!(device = %self.id, register = %w.register, "holds the value already; not rewritten");
        }
        Ok(holds)
    }

    /// Scale-factor registers must be known before a scaled value can be encoded.
    async fn load_scale_factors(&mut self, writes: &[WriteSpec]) -> Result<(), ModbusError> {
        let names: Vec<&str> = writes
            .iter()
            .filter(|w| {
                self.profile
                    .registers
                    .get(&w.register)
                    .is_some_and(|r| r.scale_register.is_some())
            })
            .map(|w| w.register.as_str())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        self.poller.refresh(&names).await
    }

    /// Marks the registers of `writes` as controlled by this device (none: nothing).
    fn claim(&self, writes: &[Pending]) {
        let names: Vec<&str> = writes.iter().map(|w| w.register.as_str()).collect();
        self.poller.claim(&self.id, &names);
    }

    /// Re-writes the last command before the device's validity runs out.
    async fn heartbeat(&mut self) {
        let Some(at) = self.refresh_at else { return };
        if Instant::now() < at || self.last_writes.is_empty() {
            return;
        }
        let writes = self.last_writes.clone();
        match self.send(&writes).await {
            Ok(()) => self.schedule_refresh(),
            Err(e) => {
                tracing::warn!(device = %self.id, error = %e, "heartbeat re-write failed; retrying next poll")
            }
        }
    }

    fn schedule_refresh(&mut self) {
        self.refresh_at = self
            .profile
            .refresh_s
            .map(|s| Instant::now() + Duration::from_secs(s));
    }
}

#[async_trait]
impl Device for MapDevice {
    fn info(&self) -> DeviceInfo {
        let mut control = vec![ControlCapability::NotControllable];
        if let Some(ch) = self.charger() {
            let d = Self::default_setting(ch);
            let max_w = d.amps * f64::from(d.phases) * Self::volts(ch);
            control.push(ControlCapability::PowerEnvelope { min_w: 0.0, max_w });
        } else if let Some(e) = self.profile.envelope {
            control.push(ControlCapability::PowerEnvelope {
                min_w: e.min_w,
                max_w: e.max_w,
            });
        }
        let modes = self.mode_specs();
        if !modes.is_empty() {
            control.push(ControlCapability::OperationModes {
                modes,
                min_on_s: self.profile.min_on_s.unwrap_or(0),
                min_off_s: self.profile.min_off_s.unwrap_or(0),
            });
        }
        DeviceInfo {
            kind: self.kind(),
            // "Reported per phase", not "wired for three phases": a charger without
            // per-phase readings is measured as a symmetric total.
            three_phase: self.profile.readings.phase_power.is_some(),
            control,
            ..DeviceInfo::default()
        }
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        self.poller.poll().await?;
        self.heartbeat().await;
        Ok(self.readings())
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        tracing::debug!(device = %self.id, command = %command.summary(), "modbus apply");
        let (writes, params) = self.plan(command)?;
        self.load_scale_factors(&writes).await?;
        let pending = self.encode(&writes, params)?;
        // Claimed before the first write, so no proxy client writes in between.
        if !matches!(command, Command::Release) {
            self.claim(&pending);
        }
        if let Err(e) = self.send(&pending).await {
            let active = if self.active.is_some() {
                self.last_writes.clone()
            } else {
                Vec::new()
            };
            self.claim(&active);
            return Err(e.into());
        }
        self.active = match command {
            Command::Release => None,
            other => Some(other.clone()),
        };
        self.claim(if self.active.is_some() { &pending } else { &[] });
        self.last_writes = pending;
        self.schedule_refresh();
        Ok(())
    }
}
