//! SunSpec: discovery, the model points s2gw uses, and inverter/storage control with the
//! fail-safe rules.
//!
//! Offsets below count from a model's ID register (ID at 0, L at 1), as the SunSpec model
//! definitions lay them out.

use std::fmt;

use async_trait::async_trait;
use s2gw_core::device::plausible_soc;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};
use tokio::time::Instant;

use crate::bus::Table;
use crate::config::SunSpecOptions;
use crate::error::ModbusError;
use crate::point::{Coalescing, Point, PollGroup, Poller, Unit, WriteFc};
use crate::value::{Sentinels, ValueType};

/// The marker `SunS` at a base address.
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];
/// Where SunSpec devices put their marker, in probing order.
pub const DEFAULT_BASES: [u16; 3] = [40000, 0, 50000];
/// A chain longer than this is taken as garbage rather than walked forever.
const MAX_MODELS: usize = 64;
/// SunSpec inverter status "FAULT" (models 101–103, 111–113).
const ST_FAULT: f64 = 7.0;

/// One model block found by discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelEntry {
    /// Model id.
    pub id: u16,
    /// Address of its ID register (0-based).
    pub address: u16,
    /// Its length register: registers after ID and L.
    pub len: u16,
}

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Where the marker is.
    pub base: u16,
    /// The model chain, in order.
    pub models: Vec<ModelEntry>,
}

impl Discovery {
    /// The first model with one of these ids.
    pub fn find(&self, ids: &[u16]) -> Option<ModelEntry> {
        self.models.iter().copied().find(|m| ids.contains(&m.id))
    }
}

/// A model's human name.
pub fn model_name(id: u16) -> &'static str {
    match id {
        1 => "common",
        101 => "single-phase inverter",
        102 => "split-phase inverter",
        103 => "three-phase inverter",
        111 => "single-phase inverter (float)",
        112 => "split-phase inverter (float)",
        113 => "three-phase inverter (float)",
        120 => "nameplate",
        121 => "basic settings",
        122 => "measurements and status",
        123 => "immediate controls",
        124 => "storage",
        160 => "MPPT",
        701 => "DER AC measurement",
        702 => "DER capacity",
        704 => "DER AC controls",
        _ => "other",
    }
}

/// Finds the marker at one of `bases` and walks the model chain to 0xFFFF.
pub async fn discover(unit: &Unit, bases: &[u16]) -> Result<Discovery, ModbusError> {
    for &base in bases {
        match unit.read_words(Table::Holding, base, 2).await {
            Ok(words) if words == MARKER => return walk(unit, base).await,
            Ok(_) | Err(ModbusError::Exception { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ModbusError::NotSunSpec {
        target: unit.bus.target().to_string(),
        unit: unit.id,
        tried: bases.to_vec(),
    })
}

async fn walk(unit: &Unit, base: u16) -> Result<Discovery, ModbusError> {
    let mut models = Vec::new();
    let mut address = u32::from(base) + 2;
    while models.len() < MAX_MODELS && address + 2 <= u32::from(u16::MAX) {
        let header = match unit.read_words(Table::Holding, address as u16, 2).await {
            Ok(h) => h,
            // Some devices end the chain without the 0xFFFF block: past the end is an
            // illegal address.
            Err(ModbusError::Exception { code: 2, .. }) => break,
            Err(e) => return Err(e),
        };
        let (id, len) = (header[0], header[1]);
        if id == 0xFFFF || id == 0 {
            break;
        }
        models.push(ModelEntry {
            id,
            address: address as u16,
            len,
        });
        address += 2 + u32::from(len);
    }
    Ok(Discovery { base, models })
}

/// A point of a model: name, offset from the ID register, type, scale-factor offset,
/// poll group.
type PointDef = (&'static str, u16, ValueType, Option<u16>, PollGroup);

use PollGroup::{Fast, Once, Slow};
use ValueType::{Acc32, Bitmask16, F32, I16, I32, U16, U32, U64};

const COMMON: &[PointDef] = &[
    ("Mn", 2, ValueType::String, None, Once),
    ("Md", 18, ValueType::String, None, Once),
    ("Vr", 42, ValueType::String, None, Once),
    ("SN", 50, ValueType::String, None, Once),
];
const INVERTER_INT: &[PointDef] = &[
    ("W", 14, I16, Some(15), Fast),
    ("Hz", 16, U16, Some(17), Slow),
    ("WH", 24, Acc32, Some(26), Slow),
    ("DCW", 31, I16, Some(32), Slow),
    ("St", 38, U16, None, Fast),
];
const INVERTER_FLOAT: &[PointDef] = &[
    ("W", 22, F32, None, Fast),
    ("Hz", 24, F32, None, Slow),
    ("WH", 32, F32, None, Slow),
    ("DCW", 38, F32, None, Slow),
    ("St", 48, U16, None, Fast),
];
const NAMEPLATE: &[PointDef] = &[
    ("WRtg", 3, U16, Some(4), Once),
    ("WHRtg", 19, U16, Some(20), Once),
    ("MaxChaRte", 23, U16, Some(24), Once),
    ("MaxDisChaRte", 25, U16, Some(26), Once),
];
const SETTINGS: &[PointDef] = &[("WMax", 2, U16, Some(22), Once)];
const CONTROLS_123: &[PointDef] = &[
    ("WMaxLimPct", 5, U16, Some(23), Slow),
    ("WMaxLimPct_WinTms", 6, U16, None, Slow),
    ("WMaxLimPct_RvrtTms", 7, U16, None, Slow),
    ("WMaxLimPct_RmpTms", 8, U16, None, Slow),
    ("WMaxLim_Ena", 9, U16, None, Slow),
];
const STORAGE: &[PointDef] = &[
    ("WChaMax", 2, U16, Some(18), Slow),
    ("StorCtl_Mod", 5, Bitmask16, None, Slow),
    ("MinRsvPct", 7, U16, Some(21), Slow),
    ("ChaState", 8, U16, Some(22), Fast),
    ("ChaSt", 11, U16, None, Fast),
    ("OutWRte", 12, I16, Some(25), Slow),
    ("InWRte", 13, I16, Some(25), Slow),
    ("InOutWRte_RvrtTms", 15, U16, None, Slow),
];
const DER_MEASURE: &[PointDef] = &[
    ("InvSt", 4, U16, None, Fast),
    ("W", 10, I16, Some(116), Fast),
    ("TotWhInj", 19, U64, Some(120), Slow),
    ("WL1", 41, I16, Some(116), Fast),
    ("WL2", 64, I16, Some(116), Fast),
    ("WL3", 87, I16, Some(116), Fast),
];
const DER_CONTROLS: &[PointDef] = &[
    ("WMaxLimPctEna", 14, U16, None, Slow),
    ("WMaxLimPct", 15, U16, Some(54), Slow),
    ("WMaxLimPctRvrt", 16, U16, Some(54), Slow),
    ("WMaxLimPctEnaRvrt", 17, U16, None, Slow),
    ("WMaxLimPctRvrtTms", 18, U32, None, Slow),
    ("WMaxLimPctRvrtRem", 20, U32, None, Slow),
    ("WSetEna", 22, U16, None, Slow),
    ("WSet", 24, I32, Some(55), Slow),
];

fn defs(model: u16) -> &'static [PointDef] {
    match model {
        1 => COMMON,
        101..=103 => INVERTER_INT,
        111..=113 => INVERTER_FLOAT,
        120 => NAMEPLATE,
        121 => SETTINGS,
        123 => CONTROLS_123,
        124 => STORAGE,
        701 => DER_MEASURE,
        704 => DER_CONTROLS,
        _ => &[],
    }
}

/// The points of every known model found, named `"<model>.<point>"` (`"103.W"`).
pub fn points(discovery: &Discovery) -> Vec<Point> {
    let mut out = Vec::new();
    for m in &discovery.models {
        for &(name, offset, ty, sf, group) in defs(m.id) {
            // A device that shortened a model must not make us read past it.
            if offset + ty.width(16) > m.len + 2 {
                continue;
            }
            let mut p = Point::holding(&format!("{}.{name}", m.id), m.address + offset, ty);
            p.length = if ty == ValueType::String {
                if name == "Vr" { 8 } else { 16 }
            } else {
                ty.width(1)
            };
            p.sentinels = Sentinels::Sunspec;
            p.scale_register = sf.filter(|o| *o < m.len + 2).map(|o| m.address + o);
            p.group = group;
            out.push(p);
        }
    }
    out
}

/// The control model a limit goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimitVia {
    /// Model 704 (DER AC controls).
    M704,
    /// Model 123 (immediate controls).
    M123,
}

impl LimitVia {
    fn enable(self) -> &'static str {
        match self {
            LimitVia::M704 => "704.WMaxLimPctEna",
            LimitVia::M123 => "123.WMaxLim_Ena",
        }
    }

    fn pct(self) -> &'static str {
        match self {
            LimitVia::M704 => "704.WMaxLimPct",
            LimitVia::M123 => "123.WMaxLimPct",
        }
    }

    /// The limit's revert timer, s (0: the limit stays until someone clears it).
    fn revert_tms(self) -> &'static str {
        match self {
            LimitVia::M704 => "704.WMaxLimPctRvrtTms",
            LimitVia::M123 => "123.WMaxLimPct_RvrtTms",
        }
    }

    /// The settings a Release puts back, enable last.
    fn restorable(self) -> &'static [&'static str] {
        match self {
            LimitVia::M704 => &[
                "704.WMaxLimPctRvrtTms",
                "704.WMaxLimPctRvrt",
                "704.WMaxLimPctEnaRvrt",
                "704.WMaxLimPct",
                "704.WMaxLimPctEna",
            ],
            LimitVia::M123 => &[
                "123.WMaxLimPct_WinTms",
                "123.WMaxLimPct_RvrtTms",
                "123.WMaxLimPct_RmpTms",
                "123.WMaxLimPct",
                "123.WMaxLim_Ena",
            ],
        }
    }
}

impl fmt::Display for LimitVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitVia::M704 => "model 704",
            LimitVia::M123 => "model 123",
        })
    }
}

const STORAGE_RESTORABLE: &[&str] = &[
    "124.InOutWRte_RvrtTms",
    "124.InWRte",
    "124.OutWRte",
    "124.StorCtl_Mod",
];

/// Raw register values captured before the gateway wrote anything: the installer's
/// settings that a Release restores (fail-safe rule 3).
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    regs: Vec<(String, Vec<u16>)>,
}

/// A SunSpec inverter or storage (see the crate docs).
pub struct SunSpecDevice {
    id: String,
    opts: SunSpecOptions,
    poller: Poller,
    discovery: Option<Discovery>,
    limit_via: Option<LimitVia>,
    /// A limit that was active and not ours at start-up, restored by Release.
    foreign_limit: Option<Snapshot>,
    /// The same for storage control.
    foreign_storage: Option<Snapshot>,
    active: Option<Command>,
    refresh_at: Option<Instant>,
}

impl SunSpecDevice {
    /// A device on `unit`; discovery runs on the first read or command.
    pub fn new(
        id: &str,
        unit: Unit,
        opts: &SunSpecOptions,
        coalescing: Coalescing,
    ) -> SunSpecDevice {
        SunSpecDevice {
            id: id.to_string(),
            opts: opts.clone(),
            poller: Poller::new(unit, Vec::new(), coalescing),
            discovery: None,
            limit_via: None,
            foreign_limit: None,
            foreign_storage: None,
            active: None,
            refresh_at: None,
        }
    }

    /// What discovery found, once it ran.
    pub fn discovery(&self) -> Option<&Discovery> {
        self.discovery.as_ref()
    }

    /// The poller (tests look at request counts through it).
    pub fn poller_mut(&mut self) -> &mut Poller {
        &mut self.poller
    }

    fn has(&self, id: u16) -> bool {
        self.discovery
            .as_ref()
            .is_some_and(|d| d.find(&[id]).is_some())
    }

    fn inverter_model(&self) -> Option<u16> {
        let d = self.discovery.as_ref()?;
        d.find(&[101, 102, 103, 111, 112, 113]).map(|m| m.id)
    }

    /// Discovers on first use, then reads the control state before anything is written
    /// (fail-safe rule 3).
    async fn ensure_discovered(&mut self) -> Result<(), ModbusError> {
        if self.discovery.is_some() {
            return Ok(());
        }
        let bases = self
            .opts
            .bases
            .clone()
            .unwrap_or_else(|| DEFAULT_BASES.to_vec());
        let discovery = discover(&self.poller.unit, &bases).await?;
        self.poller.add(points(&discovery));
        self.limit_via = pick_limit(&discovery, self.opts.control.as_deref());
        tracing::info!(device = %self.id, base = discovery.base,
            models = ?discovery.models.iter().map(|m| m.id).collect::<Vec<_>>(),
            limit = ?self.limit_via, "SunSpec device discovered");
        self.discovery = Some(discovery);
        self.poller.poll().await?;
        self.capture_foreign();
        Ok(())
    }

    /// Records an enabled limit or storage setting nobody in this gateway wrote. A limit
    /// curtails only when enabled *and* below 100 % (some inverters keep the enable flag
    /// at 1 at 100 %): only then is it reported and our limits capped to it; an enabled
    /// 100 % is still put back exactly on release (rule 3).
    ///
    /// One with a running revert timer is not an installer's standing setting: it is a
    /// command the device drops by itself, most likely this gateway's own from before a
    /// crash and restart. Keeping it as a cap would hold the device at the old CEM's
    /// limit for as long as the gateway runs.
    fn capture_foreign(&mut self) {
        if let Some(via) = self.limit_via
            && self.poller.number(via.enable()) == Some(1.0)
        {
            let pct = self.poller.number(via.pct()).unwrap_or(100.0);
            if self.reverts_by_itself(via.revert_tms()) {
                tracing::info!(device = %self.id, pct, %via,
                    "an active power limit with a revert timer (this gateway's own before a restart?): temporary, not kept");
            } else {
                if pct < 100.0 {
                    tracing::warn!(device = %self.id, pct, %via,
                        "an active power limit was set by someone else (installer?): left as it is, and restored on release");
                } else {
                    tracing::info!(device = %self.id, %via,
                        "the power limit is enabled at 100 % (not curtailing): restored as it is on release");
                }
                self.foreign_limit = self.snapshot(via.restorable());
            }
        }
        if self.has(124)
            && self.opts.storage
            && self
                .poller
                .number("124.StorCtl_Mod")
                .is_some_and(|m| m != 0.0)
        {
            if self.reverts_by_itself("124.InOutWRte_RvrtTms") {
                tracing::info!(device = %self.id, "storage control with a revert timer (this gateway's own before a restart?): temporary, not kept");
            } else {
                tracing::warn!(device = %self.id, "storage control is active and not ours: restored on release");
                self.foreign_storage = self.snapshot(STORAGE_RESTORABLE);
            }
        }
    }

    /// Whether the revert timer `name` runs (non-zero seconds).
    fn reverts_by_itself(&self, name: &str) -> bool {
        self.poller.number(name).is_some_and(|s| s > 0.0)
    }

    fn snapshot(&self, names: &[&str]) -> Option<Snapshot> {
        let regs = names
            .iter()
            .filter_map(|n| Some((n.to_string(), self.poller.raw(n)?)))
            .collect();
        Some(Snapshot { regs })
    }

    /// Rated power: WMax (121), else WRtg (120), else the profile's `rated_w`.
    fn wmax(&self) -> Option<f64> {
        self.poller
            .number("121.WMax")
            .or_else(|| self.poller.number("120.WRtg"))
            .or(self.opts.rated_w)
            .filter(|w| *w > 0.0)
    }

    /// The foreign limit's percentage when it curtails (below 100 %), which our limits
    /// never exceed.
    fn foreign_pct(&self) -> Option<f64> {
        let via = self.limit_via?;
        let snap = self.foreign_limit.as_ref()?;
        let words = snap.regs.iter().find(|(n, _)| n == via.pct())?.1.clone();
        let raw = f64::from(*words.first()?);
        Some(raw * self.poller.multiplier(via.pct())?).filter(|p| *p < 100.0)
    }

    fn fc(&self) -> WriteFc {
        self.opts.write.unwrap_or(WriteFc::Fc16)
    }

    async fn write(&mut self, name: &str, value: f64) -> Result<(), ModbusError> {
        let fc = self.fc();
        self.poller.write(name, value, fc, true).await
    }

    async fn restore(&mut self, snap: &Snapshot) -> Result<(), ModbusError> {
        let fc = self.fc();
        for (name, words) in &snap.regs {
            self.poller.write_raw(name, words, fc, true).await?;
        }
        Ok(())
    }

    async fn limit(&mut self, min_w: Option<f64>) -> Result<(), DeviceError> {
        let via = self.limit_via.ok_or_else(|| {
            DeviceError::Refused("the device has no SunSpec power limit (704 or 123)".into())
        })?;
        let wmax = self.wmax().ok_or_else(|| {
            DeviceError::Refused("rated power unknown: set sunspec.rated_w".into())
        })?;
        // Production is negative power: a lower bound of -3000 W allows 3000 W of production.
        let asked = min_w.map(|w| (-w).max(0.0) / wmax * 100.0);
        let pct = match (asked, self.foreign_pct()) {
            (Some(a), Some(f)) => Some(a.min(f)),
            (a, f) => a.or(f),
        };
        self.poller.refresh(via.restorable()).await?;
        match pct.filter(|p| *p < 100.0) {
            None => self.write(via.enable(), 0.0).await?,
            Some(p) => self.enable_limit(via, p.max(0.0)).await?,
        }
        Ok(())
    }

    async fn enable_limit(&mut self, via: LimitVia, pct: f64) -> Result<(), ModbusError> {
        let revert = f64::from(self.opts.revert().as_secs() as u32);
        match via {
            LimitVia::M704 => {
                // Should the gateway die, the device reverts to the installer's limit if
                // there was one, else to no limit.
                let (rvrt_pct, rvrt_ena) = match self.foreign_pct() {
                    Some(f) => (f, 1.0),
                    None => (100.0, 0.0),
                };
                self.write("704.WMaxLimPctRvrtTms", revert).await?;
                self.write("704.WMaxLimPctRvrt", rvrt_pct).await?;
                self.write("704.WMaxLimPctEnaRvrt", rvrt_ena).await?;
                self.write("704.WMaxLimPct", pct).await?;
                self.write("704.WMaxLimPctEna", 1.0).await
            }
            LimitVia::M123 => {
                self.write("123.WMaxLimPct_RvrtTms", revert.min(65535.0))
                    .await?;
                self.write("123.WMaxLimPct", pct).await?;
                self.write("123.WMaxLim_Ena", 1.0).await
            }
        }
    }

    async fn release(&mut self) -> Result<(), DeviceError> {
        if let Some(via) = self.limit_via {
            self.poller.refresh(via.restorable()).await?;
            match self.foreign_limit.clone() {
                Some(snap) => self.restore(&snap).await?,
                None => self.write(via.enable(), 0.0).await?,
            }
        }
        if self.opts.storage && self.has(124) {
            self.poller.refresh(STORAGE_RESTORABLE).await?;
            match self.foreign_storage.clone() {
                Some(snap) => self.restore(&snap).await?,
                None => self.write("124.StorCtl_Mod", 0.0).await?,
            }
        }
        Ok(())
    }

    /// Battery setpoint through model 124: charging forces the discharge rate negative
    /// and the other way round, with both limits enabled (StorCtl_Mod = 3).
    async fn set_power(&mut self, watts: f64) -> Result<(), DeviceError> {
        if !(self.opts.storage && self.has(124)) {
            return Err(DeviceError::Refused(
                "no SunSpec storage control (model 124)".into(),
            ));
        }
        self.poller.refresh(STORAGE_RESTORABLE).await?;
        self.poller.refresh(&["124.WChaMax"]).await?;
        let max = self
            .poller
            .number("124.WChaMax")
            .filter(|w| *w > 0.0)
            .ok_or_else(|| DeviceError::Refused("WChaMax (124) is not implemented".into()))?;
        let pct = (watts.abs() / max * 100.0).min(100.0);
        let (in_rate, out_rate) = if watts >= 0.0 {
            (pct, -pct)
        } else {
            (-pct, pct)
        };
        let revert = f64::from(self.opts.revert().as_secs().min(65535) as u32);
        self.write("124.InOutWRte_RvrtTms", revert).await?;
        self.write("124.InWRte", in_rate).await?;
        self.write("124.OutWRte", out_rate).await?;
        self.write("124.StorCtl_Mod", 3.0).await?;
        Ok(())
    }

    async fn heartbeat(&mut self) {
        let Some(at) = self.refresh_at else { return };
        if Instant::now() < at {
            return;
        }
        if let Some(cmd) = self.active.clone()
            && let Err(e) = self.carry_out(&cmd).await
        {
            tracing::warn!(device = %self.id, error = %e, "re-writing the limit before its revert timer failed");
            return;
        }
        self.schedule_refresh();
    }

    /// The registers an active `command` controls, claimed against proxy writes.
    fn claim_for(&self, command: Option<&Command>) {
        let names: &[&str] = match command {
            Some(Command::LimitPower { .. }) => self.limit_via.map_or(&[], LimitVia::restorable),
            Some(Command::SetPower { .. }) => STORAGE_RESTORABLE,
            _ => &[],
        };
        self.poller.claim(&self.id, names);
    }

    fn schedule_refresh(&mut self) {
        // Half the revert time: one missed poll must not let the device revert.
        self.refresh_at = self
            .active
            .as_ref()
            .map(|_| Instant::now() + self.opts.revert() / 2);
    }

    async fn carry_out(&mut self, command: &Command) -> Result<(), DeviceError> {
        match command {
            Command::Release => self.release().await,
            Command::LimitPower { min_w, .. } => self.limit(*min_w).await,
            Command::SetPower { watts } => self.set_power(*watts).await,
            other => Err(DeviceError::Refused(format!(
                "a SunSpec device cannot do {}",
                other.summary()
            ))),
        }
    }

    fn readings(&self) -> Readings {
        let inv = self.inverter_model();
        let num = |p: &str| self.poller.number(p);
        // SunSpec W is AC output: production positive, the opposite of S2.
        let power = inv
            .and_then(|m| num(&format!("{m}.W")))
            .or_else(|| num("701.W"))
            .map(|w| -w);
        let phases = match (num("701.WL1"), num("701.WL2"), num("701.WL3")) {
            (Some(a), Some(b), Some(c)) => Some([-a, -b, -c]),
            _ => None,
        };
        let energy = inv
            .and_then(|m| num(&format!("{m}.WH")))
            .or_else(|| num("701.TotWhInj"));
        // 101–103/111–113 St and 701 InvSt share the FAULT value 7.
        let state = inv
            .and_then(|m| num(&format!("{m}.St")))
            .or_else(|| num("701.InvSt"));
        let status = match (power, state) {
            (None, _) => DeviceStatus::Unavailable("W is not implemented".into()),
            (_, Some(st)) if st == ST_FAULT => DeviceStatus::Fault("inverter reports FAULT".into()),
            _ => DeviceStatus::Ok,
        };
        Readings {
            power_w: power.unwrap_or(0.0),
            phase_power_w: phases,
            energy_wh: energy,
            soc: plausible_soc(num("124.ChaState")),
            status,
            active: self.active.clone().or_else(|| self.foreign_command()),
            ..Readings::default()
        }
    }

    /// The foreign limit as a command, so the demo view and MQTT show it.
    fn foreign_command(&self) -> Option<Command> {
        let pct = self.foreign_pct()?;
        Some(Command::LimitPower {
            min_w: Some(-(self.wmax()? * pct / 100.0)),
            max_w: None,
        })
    }
}

fn pick_limit(d: &Discovery, control: Option<&str>) -> Option<LimitVia> {
    let has = |id| d.find(&[id]).is_some();
    match control.unwrap_or("auto") {
        "none" => None,
        "704" => has(704).then_some(LimitVia::M704),
        "123" => has(123).then_some(LimitVia::M123),
        _ if has(704) => Some(LimitVia::M704),
        _ => has(123).then_some(LimitVia::M123),
    }
}

#[async_trait]
impl Device for SunSpecDevice {
    fn info(&self) -> DeviceInfo {
        let mut control = vec![ControlCapability::NotControllable];
        let discovered = self.discovery.is_some();
        let can_limit = if discovered {
            self.limit_via.is_some()
        } else {
            self.opts.control.as_deref() != Some("none")
        };
        if can_limit && let Some(w) = self.wmax() {
            control.push(ControlCapability::PowerEnvelope {
                min_w: -w,
                max_w: 0.0,
            });
        }
        if self.opts.storage && (!discovered || self.has(124)) {
            let max = self
                .poller
                .number("124.WChaMax")
                .or(self.opts.rated_w)
                .unwrap_or(0.0);
            let capacity = self
                .poller
                .number("120.WHRtg")
                .or(self.opts.capacity_wh)
                .unwrap_or(0.0);
            if max > 0.0 && capacity > 0.0 {
                control.push(ControlCapability::Storage {
                    capacity_wh: capacity,
                    max_charge_w: max,
                    max_discharge_w: self.poller.number("120.MaxDisChaRte").unwrap_or(max),
                    min_soc: self
                        .opts
                        .min_soc
                        .or_else(|| self.poller.number("124.MinRsvPct"))
                        .unwrap_or(5.0),
                    max_soc: self.opts.max_soc.unwrap_or(100.0),
                });
            }
        }
        let text = |p: &str| self.poller.text(p);
        DeviceInfo {
            kind: if self.opts.storage {
                DeviceKind::Battery
            } else {
                DeviceKind::PvInverter
            },
            manufacturer: text("1.Mn"),
            model: text("1.Md"),
            serial: text("1.SN"),
            firmware: text("1.Vr"),
            // "Reported per phase": models 103/113 are three-phase inverters but carry
            // only a total W; per-phase power comes from model 701 alone.
            three_phase: self.has(701),
            control,
        }
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        self.ensure_discovered().await?;
        self.poller.poll().await?;
        self.heartbeat().await;
        Ok(self.readings())
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        tracing::debug!(device = %self.id, command = %command.summary(), "sunspec apply");
        self.ensure_discovered().await?;
        // Claimed before the first write, so no proxy client writes in between.
        self.claim_for(Some(command));
        if let Err(e) = self.carry_out(command).await {
            self.claim_for(self.active.clone().as_ref());
            return Err(e);
        }
        self.active = match command {
            Command::Release => None,
            other => Some(other.clone()),
        };
        self.claim_for(self.active.clone().as_ref());
        self.schedule_refresh();
        Ok(())
    }
}
