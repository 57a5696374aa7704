use super::*;
use crate::BindKey;
use crate::bthome::{decode, encode};

const MAC: [u8; 6] = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];

fn packet(objects: &[u8]) -> Packet {
    decode(&encode(objects, MAC, None, 0, false), MAC, None).unwrap()
}

fn relay() -> BleProfile {
    let path = format!(
        "{}/../../config/profiles/ble-relay.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    table["ble"].clone().try_into().unwrap()
}

#[test]
fn repeated_packet_ids_are_dropped_within_the_window() {
    let t0 = Instant::now();
    let mut f = PacketFilter::default();
    assert!(f.accept(&packet(&[0x00, 10, 0x01, 50]), t0));
    assert!(!f.accept(&packet(&[0x00, 10, 0x01, 50]), t0 + Duration::from_secs(1)));
    // An older packet arriving late (through a proxy) is dropped too.
    assert!(!f.accept(&packet(&[0x00, 9]), t0 + Duration::from_secs(1)));
    assert!(f.accept(&packet(&[0x00, 11]), t0 + Duration::from_secs(2)));
    // Wraps at 256.
    let mut f = PacketFilter::default();
    assert!(f.accept(&packet(&[0x00, 250]), t0));
    assert!(f.accept(&packet(&[0x00, 3]), t0));
    // Long after, the same id is a new packet (the device restarted or was away).
    assert!(f.accept(&packet(&[0x00, 3]), t0 + Duration::from_secs(10)));
    // No packet id: nothing to compare.
    assert!(f.accept(&packet(&[0x01, 50]), t0 + Duration::from_secs(10)));
}

#[test]
fn replayed_encrypted_packets_are_dropped() {
    let key = BindKey::new([1; 16]);
    let enc = |counter| {
        decode(
            &encode(&[0x01, 50], MAC, Some(&key), counter, false),
            MAC,
            Some(&key),
        )
        .unwrap()
    };
    let t0 = Instant::now();
    let mut f = PacketFilter::default();
    assert!(f.accept(&enc(500), t0));
    assert!(!f.accept(&enc(400), t0));
    // A restart near zero is not a replay.
    assert!(f.accept(&enc(3), t0));
}

#[test]
fn a_bthome_power_sensor_reads_and_goes_stale() {
    let c = BleConnection {
        stale_after_s: Some(60),
        ..BleConnection::with_address("54:48:E6:8F:80:A5")
    };
    let mut s = SensorState::new(&BleProfile::bthome(), &c);
    let t0 = Instant::now();
    let r = s.readings(t0);
    assert!(matches!(r.status, DeviceStatus::Unavailable(_)) && r.power_w.is_nan());
    // power 1234.56 W and energy 12.345 kWh
    s.apply_bthome(
        &packet(&[0x0A, 0x39, 0x30, 0x00, 0x0B, 0x40, 0xE2, 0x01]),
        t0,
    );
    let r = s.readings(t0 + Duration::from_secs(59));
    assert_eq!(
        (r.power_w, r.energy_wh, r.status),
        (1234.56, Some(12345.0), DeviceStatus::Ok)
    );
    // A packet without power or energy (a battery report) does not refresh anything.
    s.apply_bthome(&packet(&[0x01, 80]), t0 + Duration::from_secs(30));
    let r = s.readings(t0 + Duration::from_secs(61));
    assert!(
        matches!(&r.status, DeviceStatus::Unavailable(why) if why.contains("no data for 61 s")),
        "{r:?}"
    );
    assert!(r.power_w.is_nan() && r.energy_wh.is_none());
}

#[test]
fn an_energy_only_report_is_not_a_power_reading() {
    let mut s = SensorState::new(&BleProfile::bthome(), &BleConnection::default());
    let t0 = Instant::now();
    s.apply_bthome(&packet(&[0x0A, 1, 0, 0]), t0);
    assert!(matches!(
        s.readings(t0).status,
        DeviceStatus::Unavailable(_)
    ));
    // Signed power (0x5C): production is negative.
    s.apply_bthome(&packet(&[0x5C, 0x18, 0xFC, 0xFF, 0xFF]), t0);
    assert_eq!(s.readings(t0).power_w, -10.0);
}

#[test]
fn problems_become_the_unavailable_reason() {
    let mut s = SensorState::new(&BleProfile::bthome(), &BleConnection::default());
    s.note_problem("decryption failed (wrong bindkey?)");
    let r = s.readings(Instant::now());
    assert_eq!(
        r.status,
        DeviceStatus::Unavailable("decryption failed (wrong bindkey?)".into())
    );
}

#[test]
fn a_relay_reports_its_mode_and_declared_power() {
    let p = relay();
    let mut s = SensorState::new(&p, &BleConnection::default());
    let t0 = Instant::now();
    s.apply_value(ReadingField::State, 1.0, t0);
    let r = s.readings(t0);
    assert_eq!(r.active, Some(Command::SetMode { mode: "on".into() }));
    assert_eq!((r.power_w, r.status), (2000.0, DeviceStatus::Ok));
    s.apply_value(ReadingField::State, 0.0, t0);
    assert_eq!(s.readings(t0).power_w, 0.0);
    // A state no mode claims: the power is unknown, so the relay is unavailable.
    s.apply_value(ReadingField::State, 7.0, t0);
    assert!(matches!(
        s.readings(t0).status,
        DeviceStatus::Unavailable(_)
    ));
}

#[test]
fn relay_capabilities_and_writes() {
    let p = relay();
    assert_eq!(device_kind(&p), DeviceKind::Load);
    let caps = capabilities(&p);
    let ControlCapability::OperationModes {
        modes, min_on_s, ..
    } = &caps[0]
    else {
        panic!("{caps:?}")
    };
    assert_eq!((modes.len(), *min_on_s), (2, 60));
    assert!(modes[0].is_default && modes[0].name == "on");
    assert_eq!(caps[1], ControlCapability::NotControllable);

    let off = write_for(&p, &Command::SetMode { mode: "off".into() }).unwrap();
    assert_eq!(
        (off.payload.as_slice(), off.expect_state, off.with_response),
        (&[0u8][..], Some(0.0), true)
    );
    assert_eq!(
        off.characteristic.to_string(),
        "00001525-1212-efde-1523-785feabcd123"
    );
    assert_eq!(write_for(&p, &Command::Release).unwrap().mode, "on");
    assert!(matches!(
        write_for(&p, &Command::SetMode { mode: "dim".into() }),
        Err(DeviceError::Refused(_))
    ));
    assert!(matches!(
        write_for(&p, &Command::SetPower { watts: 1.0 }),
        Err(DeviceError::Refused(_))
    ));
    assert_eq!(
        capabilities(&BleProfile::bthome()),
        vec![ControlCapability::NotControllable]
    );
}
