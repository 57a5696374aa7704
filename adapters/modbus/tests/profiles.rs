//! Every shipped Modbus profile parses and validates; broken ones are reported by key.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use s2gw_modbus::ModbusConfig;

#[test]
fn shipped_profiles_validate() {
    for name in [
        "modbus-sunspec-inverter",
        "modbus-sunspec-storage",
        "modbus-abb-terra-ac",
        "modbus-alfen-eve",
        "modbus-sg-ready",
        "modbus-sdm630",
        "modbus-fronius",
        "modbus-sma",
        "modbus-go-e",
        "modbus-keba-p30",
        "modbus-heidelberg-ec",
        "modbus-solaredge",
    ] {
        let p = common::profile(name);
        assert_eq!(p.validate(), Vec::<(String, String)>::new(), "{name}");
    }
}

fn config(text: &str) -> Result<ModbusConfig, Vec<(String, String)>> {
    let table: BTreeMap<String, toml::Value> = toml::from_str(text).unwrap();
    ModbusConfig::from_table(table)
}

#[test]
fn connection_and_profile_keys_are_split_and_checked() {
    let c = config("tcp = \"10.0.0.2:502\"\nunit = 3\naddress_base = 1\n[registers.p]\ntable = \"input\"\naddress = 1\n[readings]\npower = \"p\"").unwrap();
    assert_eq!(c.connection.unit(), 3);
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert!(
        config("tcp = \"x:1\"\nbogus = 1").is_err(),
        "unknown keys are refused"
    );
    let bad = config(
        "serial = \"/dev/ttyUSB0\"\nbaud = 9600\nunit = 250\n[registers.p]\ntable = \"coil\"\naddress = 0\ntype = \"f32\"\nwrite = \"fc16\"\n[readings]\npower = \"q\"",
    )
    .unwrap();
    let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
    for k in [
        "unit",
        "address_base",
        "registers.p.type",
        "registers.p.write",
        "readings.power",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} not reported in {keys:?}");
    }
}

/// Unit 255 ("not significant" on Modbus TCP, which KEBA requires) is taken on TCP only.
#[test]
fn unit_255_is_accepted_on_modbus_tcp_only() {
    let map = "address_base = 0\n[registers.p]\ntable = \"input\"\naddress = 1\n[readings]\npower = \"p\"";
    let tcp = config(&format!("tcp = \"10.0.0.2:502\"\nunit = 255\n{map}")).unwrap();
    assert!(tcp.validate().is_empty(), "{:?}", tcp.validate());
    let rtu = config(&format!("serial = \"/dev/ttyUSB0\"\nunit = 255\n{map}")).unwrap();
    let keys: Vec<String> = rtu.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["unit"]);
}

/// A percentage limit needs the production bound it is a percentage of.
#[test]
fn a_percentage_limit_without_a_production_bound_is_reported() {
    let mut p = common::profile("modbus-solaredge");
    p.envelope = None;
    let keys: Vec<String> = p.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["envelope.min_w"]);
}
