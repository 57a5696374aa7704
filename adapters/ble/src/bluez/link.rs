//! The background task of one BLE device: scan, decode or connect, read, write, and
//! start over with back-off when anything breaks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btleplug::api::{
    Central, CentralEvent, Characteristic, Peripheral as _, PeripheralProperties, ScanFilter,
    WriteType,
};
use btleplug::platform::{Adapter, Peripheral, PeripheralId};
use futures_util::StreamExt;
use s2gw_core::{Backoff, DeviceError};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::open_adapter;
use crate::bindkey::BindKey;
use crate::bthome::{self, SERVICE_UUID};
use crate::config::{BleConnection, BleProfile, BleSource, GattReading, ReadingField, parse_uuid};
use crate::gatt::decode_value;
use crate::state::{PacketFilter, SensorState, Write};

/// Connecting to a GATT device is given this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A write for the link task, answered on `reply`.
pub(crate) struct WriteRequest {
    pub(crate) write: Write,
    pub(crate) reply: oneshot::Sender<Result<(), DeviceError>>,
}

/// Everything the task needs to know, fixed at build time.
pub(crate) struct Plan {
    pub(crate) id: String,
    pub(crate) connection: BleConnection,
    pub(crate) profile: BleProfile,
    address: Option<[u8; 6]>,
    scan_service: Option<Uuid>,
    /// The bindkey, or why it could not be loaded (reported as the device's problem).
    bindkey: Result<Option<BindKey>, String>,
}

impl Plan {
    pub(crate) fn new(id: &str, connection: &BleConnection, profile: &BleProfile) -> Self {
        Self {
            id: id.to_string(),
            connection: connection.clone(),
            profile: profile.clone(),
            address: connection.address_bytes(),
            scan_service: profile.scan_service(connection),
            bindkey: connection.load_bindkey().map_err(|e| e.to_string()),
        }
    }

    /// Whether `props` describe this device.
    fn matches(&self, props: &PeripheralProperties) -> bool {
        let address_ok = self.address.is_none_or(|a| props.address.into_inner() == a);
        let name_ok = self.connection.name.as_deref().is_none_or(|n| {
            props.local_name.as_deref() == Some(n) || props.advertisement_name.as_deref() == Some(n)
        });
        address_ok && name_ok
    }
}

type Shared = Arc<Mutex<SensorState>>;

fn with_state<R>(state: &Shared, f: impl FnOnce(&mut SensorState) -> R) -> R {
    // See BleDevice::state: the values behind a poisoned lock are still the latest.
    let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// The task: sessions, each until it breaks, with back-off in between.
pub(crate) async fn run(plan: Arc<Plan>, state: Shared, mut writes: mpsc::Receiver<WriteRequest>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut last_problem = String::new();
    loop {
        let started = Instant::now();
        let problem = match session(&plan, &state, &mut writes).await {
            Ok(()) => return,
            Err(problem) => problem,
        };
        // A session that lasted a while was a working one: start the back-off over.
        if started.elapsed() > Duration::from_secs(60) {
            backoff.reset();
        }
        if problem != last_problem {
            tracing::warn!(device = %plan.id, %problem, "BLE device link down; retrying");
            last_problem.clone_from(&problem);
        }
        with_state(&state, |s| s.note_problem(problem.clone()));
        let pause = tokio::time::sleep(backoff.next_delay());
        if !refuse_writes_during(pause, &mut writes, &problem).await {
            return;
        }
    }
}

/// Answer writes with "unreachable" until `pause` ends; false when the device is gone.
async fn refuse_writes_during(
    pause: tokio::time::Sleep,
    writes: &mut mpsc::Receiver<WriteRequest>,
    problem: &str,
) -> bool {
    tokio::pin!(pause);
    loop {
        tokio::select! {
            () = &mut pause => return true,
            request = writes.recv() => match request {
                Some(r) => drop(r.reply.send(Err(DeviceError::Unreachable(problem.to_string())))),
                None => return false,
            },
        }
    }
}

/// One session; `Ok` only when the device was dropped (the write channel closed).
async fn session(
    plan: &Plan,
    state: &Shared,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Result<(), String> {
    if let Err(problem) = &plan.bindkey {
        return Err(problem.clone());
    }
    let (adapter, _) = open_adapter(plan.connection.adapter.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let events = adapter
        .events()
        .await
        .map_err(|e| format!("BlueZ events: {e}"))?;
    let filter = ScanFilter {
        services: plan.scan_service.into_iter().collect(),
    };
    adapter
        .start_scan(filter)
        .await
        .map_err(|e| format!("cannot start scanning: {e}"))?;
    match plan.profile.source {
        BleSource::Bthome => bthome_session(plan, state, &adapter, events, writes).await,
        BleSource::Gatt => gatt_session(plan, state, &adapter, events, writes).await,
    }
}

type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = CentralEvent> + Send>>;

/// BTHome: listen to advertisements; nothing to connect to, nothing to write.
async fn bthome_session(
    plan: &Plan,
    state: &Shared,
    adapter: &Adapter,
    mut events: Events,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Result<(), String> {
    let mut filter = PacketFilter::default();
    // Devices already known to BlueZ carry their last advertisement.
    for peripheral in adapter.peripherals().await.map_err(|e| e.to_string())? {
        if let Ok(Some(props)) = peripheral.properties().await {
            take_advertisement(plan, state, &mut filter, &props, &props.service_data);
        }
    }
    loop {
        tokio::select! {
            event = events.next() => {
                let event = event.ok_or("BlueZ stopped sending events")?;
                on_bthome_event(plan, state, adapter, &mut filter, event).await;
            }
            request = writes.recv() => match request {
                Some(r) => drop(r.reply.send(Err(DeviceError::Refused("a BTHome sensor takes no commands".into())))),
                None => return Ok(()),
            },
        }
    }
}

async fn on_bthome_event(
    plan: &Plan,
    state: &Shared,
    adapter: &Adapter,
    filter: &mut PacketFilter,
    event: CentralEvent,
) {
    let (id, data) = match event {
        CentralEvent::ServiceDataAdvertisement { id, service_data } => (id, Some(service_data)),
        CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) => (id, None),
        _ => return,
    };
    let Some(props) = properties(adapter, &id).await else {
        return;
    };
    let data = data.unwrap_or_else(|| props.service_data.clone());
    take_advertisement(plan, state, filter, &props, &data);
}

async fn properties(adapter: &Adapter, id: &PeripheralId) -> Option<PeripheralProperties> {
    adapter.peripheral(id).await.ok()?.properties().await.ok()?
}

/// Decode this device's BTHome service data, if `props` are this device's.
fn take_advertisement(
    plan: &Plan,
    state: &Shared,
    filter: &mut PacketFilter,
    props: &PeripheralProperties,
    service_data: &HashMap<Uuid, Vec<u8>>,
) {
    if !plan.matches(props) {
        return;
    }
    let Some(data) = service_data.get(&SERVICE_UUID) else {
        return;
    };
    let key = plan.bindkey.as_ref().ok().and_then(Option::as_ref);
    match bthome::decode(data, props.address.into_inner(), key) {
        Ok(packet) => {
            let now = Instant::now();
            if filter.accept(&packet, now) {
                with_state(state, |s| s.apply_bthome(&packet, now));
            }
        }
        Err(error) => {
            tracing::debug!(device = %plan.id, %error, "BTHome advertisement refused");
            with_state(state, |s| s.note_problem(error.to_string()));
        }
    }
}

/// GATT: find the device, connect, then poll, listen and write until it drops.
async fn gatt_session(
    plan: &Plan,
    state: &Shared,
    adapter: &Adapter,
    mut events: Events,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Result<(), String> {
    let Some(peripheral) = find(plan, adapter, &mut events, writes).await? else {
        return Ok(());
    };
    // Scanning while connected only costs airtime.
    let _ = adapter.stop_scan().await;
    tokio::time::timeout(CONNECT_TIMEOUT, peripheral.connect())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect failed: {e}"))?;
    let result = connected(plan, state, &peripheral, &mut events, writes).await;
    let _ = peripheral.disconnect().await;
    result
}

/// Wait until the device shows up; `None` when the device was dropped meanwhile.
async fn find(
    plan: &Plan,
    adapter: &Adapter,
    events: &mut Events,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Result<Option<Peripheral>, String> {
    for peripheral in adapter.peripherals().await.map_err(|e| e.to_string())? {
        if let Ok(Some(props)) = peripheral.properties().await
            && plan.matches(&props)
        {
            return Ok(Some(peripheral));
        }
    }
    loop {
        tokio::select! {
            event = events.next() => {
                let event = event.ok_or("BlueZ stopped sending events")?;
                if let CentralEvent::DeviceDiscovered(id) | CentralEvent::DeviceUpdated(id) = event
                    && properties(adapter, &id).await.is_some_and(|p| plan.matches(&p))
                {
                    return adapter.peripheral(&id).await.map(Some).map_err(|e| e.to_string());
                }
            }
            request = writes.recv() => match request {
                Some(r) => drop(r.reply.send(Err(DeviceError::Unreachable("device not found yet".into())))),
                None => return Ok(None),
            },
        }
    }
}

/// The characteristics a profile uses, found on the connected device.
struct Chars {
    readings: Vec<(GattReading, Characteristic)>,
    by_uuid: HashMap<Uuid, Characteristic>,
}

async fn discover(plan: &Plan, peripheral: &Peripheral) -> Result<Chars, String> {
    peripheral
        .discover_services()
        .await
        .map_err(|e| format!("service discovery failed: {e}"))?;
    let by_uuid: HashMap<Uuid, Characteristic> = peripheral
        .characteristics()
        .into_iter()
        .map(|c| (c.uuid, c))
        .collect();
    let find = |text: &str| {
        parse_uuid(text)
            .and_then(|u| by_uuid.get(&u).cloned())
            .ok_or_else(|| format!("the device has no characteristic {text}"))
    };
    let mut readings = Vec::new();
    for r in &plan.profile.readings {
        readings.push((r.clone(), find(&r.characteristic)?));
    }
    for m in &plan.profile.modes {
        find(&m.characteristic)?;
    }
    Ok(Chars { readings, by_uuid })
}

async fn connected(
    plan: &Plan,
    state: &Shared,
    peripheral: &Peripheral,
    events: &mut Events,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Result<(), String> {
    let chars = discover(plan, peripheral).await?;
    let mut notes = peripheral
        .notifications()
        .await
        .map_err(|e| e.to_string())?;
    for (r, c) in chars.readings.iter().filter(|(r, _)| r.notify) {
        peripheral
            .subscribe(c)
            .await
            .map_err(|e| format!("subscribe to {}: {e}", r.characteristic))?;
    }
    let poll = Duration::from_secs(
        plan.profile
            .poll_interval_s
            .unwrap_or(crate::config::DEFAULT_POLL_INTERVAL.as_secs()),
    );
    let mut ticker = tokio::time::interval(poll);
    loop {
        tokio::select! {
            _ = ticker.tick() => poll_readings(state, peripheral, &chars).await?,
            note = notes.next() => {
                let note = note.ok_or("notifications ended (disconnected)")?;
                if let Some((r, _)) = chars.readings.iter().find(|(_, c)| c.uuid == note.uuid) {
                    take_value(state, r, &note.value);
                }
            }
            event = events.next() => match event {
                Some(CentralEvent::DeviceDisconnected(id)) if id == peripheral.id() => return Err("device disconnected".into()),
                Some(_) => {}
                None => return Err("BlueZ stopped sending events".into()),
            },
            request = writes.recv() => match request {
                Some(r) => {
                    let result = write(state, peripheral, &chars, &r.write).await;
                    let _ = r.reply.send(result.clone());
                    if let Err(DeviceError::Unreachable(e)) = result {
                        return Err(e);
                    }
                }
                None => return Ok(()),
            },
        }
    }
}

async fn poll_readings(
    state: &Shared,
    peripheral: &Peripheral,
    chars: &Chars,
) -> Result<(), String> {
    for (r, c) in chars.readings.iter().filter(|(r, _)| !r.notify) {
        let bytes = peripheral
            .read(c)
            .await
            .map_err(|e| format!("read {}: {e}", r.characteristic))?;
        take_value(state, r, &bytes);
    }
    Ok(())
}

fn take_value(state: &Shared, reading: &GattReading, bytes: &[u8]) {
    match decode_value(bytes, reading.format, reading.endian) {
        Ok(raw) => with_state(state, |s| {
            s.apply_value(reading.field, reading.scaled(raw), Instant::now())
        }),
        Err(e) => with_state(state, |s| {
            s.note_problem(format!("{}: {e}", reading.characteristic))
        }),
    }
}

/// Write, then read the state back where the profile says what it should be.
async fn write(
    state: &Shared,
    peripheral: &Peripheral,
    chars: &Chars,
    write: &Write,
) -> Result<(), DeviceError> {
    let c = chars.by_uuid.get(&write.characteristic).ok_or_else(|| {
        DeviceError::Refused(format!("no characteristic {}", write.characteristic))
    })?;
    let kind = if write.with_response {
        WriteType::WithResponse
    } else {
        WriteType::WithoutResponse
    };
    peripheral
        .write(c, &write.payload, kind)
        .await
        .map_err(|e| DeviceError::Unreachable(format!("write to {}: {e}", write.characteristic)))?;
    let Some(expected) = write.expect_state else {
        return Ok(());
    };
    let Some((r, sc)) = chars
        .readings
        .iter()
        .find(|(r, _)| r.field == ReadingField::State)
    else {
        return Ok(());
    };
    let bytes = peripheral
        .read(sc)
        .await
        .map_err(|e| DeviceError::Unreachable(format!("read back: {e}")))?;
    take_value(state, r, &bytes);
    let got = with_state(state, |s| s.state_value());
    if got == Some(expected) {
        Ok(())
    } else {
        Err(DeviceError::NotConfirmed(format!(
            "mode `{}`: state reads {} after the write, expected {expected}",
            write.mode,
            got.map_or("nothing".into(), |v| v.to_string())
        )))
    }
}
