use super::*;

/// The `[ble]` table of a shipped profile file.
fn profile_file(name: &str) -> BleProfile {
    let path = format!(
        "{}/../../config/profiles/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table["ble"].clone().try_into().unwrap()
}

fn keys(problems: &[(String, String)]) -> Vec<&str> {
    problems.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn shipped_profiles_are_valid() {
    let meter = profile_file("ble-bthome-meter");
    assert_eq!(meter.source, BleSource::Bthome);
    assert_eq!(meter.validate(), vec![]);
    let relay = profile_file("ble-relay");
    assert_eq!(relay.validate(), vec![]);
    assert_eq!(relay.modes.len(), 2);
    assert_eq!(relay.readings[0].field, ReadingField::State);
}

#[test]
fn connection_needs_a_device_and_well_formed_values() {
    assert_eq!(keys(&BleConnection::default().validate()), ["address"]);
    let c: BleConnection = toml::from_str(
        "address = 'AA:BB:CC:DD:EE'\nservice_uuid = 'nope'\nstale_after_s = 0\nbindkey = 'secretsecret'",
    )
    .unwrap();
    let problems = c.validate();
    assert_eq!(
        keys(&problems),
        ["address", "service_uuid", "stale_after_s", "bindkey"]
    );
    // The reason names the length, never the key.
    assert!(!format!("{problems:?}{c:?}").contains("secretsecret"));
    assert!(toml::from_str::<BleConnection>("adress = 'x'").is_err());
}

#[test]
fn bindkey_from_text_or_file_but_not_both() {
    let dir = std::env::temp_dir().join(format!("s2gw-ble-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, "231d39c1d7cc1ab1aee224cd096db932\n").unwrap();
    let mut c = BleConnection::with_address("54:48:E6:8F:80:A5");
    c.bindkey_file = Some(file.clone());
    assert_eq!(c.validate(), vec![]);
    assert_eq!(c.load_bindkey().unwrap().unwrap().expose()[0], 0x23);
    c.bindkey = Some(BindKeyText::new("231d39c1d7cc1ab1aee224cd096db932"));
    assert_eq!(keys(&c.validate()), ["bindkey_file"]);
    c.bindkey = None;
    c.bindkey_file = Some(dir.join("missing"));
    assert_eq!(keys(&c.validate()), ["bindkey_file"]);
    // Serialized configs never carry the key.
    c.bindkey = Some(BindKeyText::new("231d39c1d7cc1ab1aee224cd096db932"));
    assert!(
        serde_json::to_string(&c)
            .unwrap()
            .contains("\"bindkey\":\"***\"")
    );
}

#[test]
fn profile_keys_apply_to_their_source_only() {
    let p: BleProfile =
        toml::from_str("source = 'bthome'\npoll_interval_s = 5\nmin_on_s = 3").unwrap();
    assert_eq!(keys(&p.validate()), ["poll_interval_s", "min_on_s"]);
    let p: BleProfile = toml::from_str("source = 'gatt'").unwrap();
    assert_eq!(keys(&p.validate()), ["readings"]);
}

#[test]
fn gatt_modes_are_checked() {
    let mut p = profile_file("ble-relay");
    p.modes[1].default = true;
    p.modes[1].name = "on".into();
    p.modes[1].payload = "a0 {u16}".into();
    p.modes[0].max_w = -1.0;
    p.readings[0].scale = Some(0.0);
    assert_eq!(
        keys(&p.validate()),
        [
            "readings[0].scale",
            "modes",
            "modes[0].max_w",
            "modes[1].name",
            "modes[1].payload"
        ]
    );
}

#[test]
fn uuids_and_addresses() {
    assert_eq!(parse_uuid("fcd2"), Some(crate::bthome::SERVICE_UUID));
    assert_eq!(parse_uuid("0xFCD2"), Some(crate::bthome::SERVICE_UUID));
    assert_eq!(
        parse_uuid("0000fcd2-0000-1000-8000-00805f9b34fb"),
        Some(crate::bthome::SERVICE_UUID)
    );
    assert_eq!(parse_uuid("fcd"), None);
    assert_eq!(
        parse_address("54:48:e6:8F:80:A5"),
        Some([0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5])
    );
    assert_eq!(parse_address("54:48:e6:8F:80"), None);
    assert_eq!(parse_address("54:48:e6:8F:80:A"), None);
}

#[test]
fn scan_filter_and_staleness_defaults() {
    let p = BleProfile::bthome();
    let mut c = BleConnection::with_address("54:48:E6:8F:80:A5");
    assert_eq!(p.scan_service(&c), Some(crate::bthome::SERVICE_UUID));
    assert_eq!(p.stale_after(&c), DEFAULT_STALE_AFTER);
    c.stale_after_s = Some(30);
    assert_eq!(p.stale_after(&c), Duration::from_secs(30));
    assert_eq!(
        profile_file("ble-relay")
            .scan_service(&BleConnection::default())
            .map(|u| u.to_string()),
        Some("00001523-1212-efde-1523-785feabcd123".to_string())
    );
}
