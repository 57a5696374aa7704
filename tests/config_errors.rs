//! Configuration loading: a table of bad configs with the errors each must produce, the
//! shipped configs, environment overrides, secrets, profiles, and the systemd unit.
//!
//! Every load here goes through `load_with_env`/`load_str_with_env` with an explicit
//! environment, because tests run in parallel and must not share the process environment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the report

use std::path::{Path, PathBuf};
use std::time::Duration;

use s2gw::config::{
    self, CemTransport, ConfigErrors, Connection, DEMO_TOML, ProfileSource, derive_resource_id,
};
use s2gw_core::s2::ControlType;

/// A CEM link every case can route to.
const CEM: &str = r#"
[cem.home]
url = "ws://127.0.0.1:9/s2/{resource_id}"
"#;

/// One valid device.
const DEV: &str = r#"
[[device]]
id = "pv"
profile = "sim-pv"
cem = "home"
[device.sim]
model = "pv"
"#;

/// A temp dir holding `s2gw.toml` with `text`, plus extra files.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s2gw.toml"), text).unwrap();
        Self { dir }
    }

    fn with_file(self, name: &str, text: &str) -> Self {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, text).unwrap();
        self
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("s2gw.toml")
    }

    fn load(&self, env: &[(&str, &str)]) -> Result<config::Config, ConfigErrors> {
        config::load_with_env(&self.path(), env)
    }

    fn errors(&self, env: &[(&str, &str)]) -> ConfigErrors {
        match self.load(env) {
            Ok(c) => panic!("expected errors, loaded {c:#?}"),
            Err(e) => e,
        }
    }
}

/// Asserts that `errors` has one for `key` in `file` whose reason contains `fragment`.
fn assert_has(errors: &ConfigErrors, file: &Path, key: &str, fragment: &str) {
    let found = errors
        .errors
        .iter()
        .any(|e| e.file == file && e.key == key && e.reason.contains(fragment));
    assert!(
        found,
        "no error {}: {key}: …{fragment}… in:\n{errors}",
        file.display()
    );
}

/// Asserts that the config file `text` fails to load with an error at `key`, in that file,
/// whose reason contains `fragment`.
fn assert_bad(text: &str, key: &str, fragment: &str) {
    let case = Case::new(text);
    let errors = case.errors(&[]);
    assert_has(&errors, &case.path(), key, fragment);
}

/// A case's config text loaded by itself, for a case that cannot coexist with the base.
struct Alone(&'static str);

/// What a case's config file is made of.
trait CaseText {
    /// The whole file.
    fn full(self) -> String;
}

impl CaseText for &str {
    /// The text after the base: one link, one device (so a case's own device is
    /// `device[1]`); TOML lets tables come in any order.
    fn full(self) -> String {
        format!("{CEM}{DEV}{self}")
    }
}

impl CaseText for Alone {
    fn full(self) -> String {
        self.0.to_string()
    }
}

/// The table of bad configs: one `#[test]` per named case, so a failure names it.
/// `name: text => key, fragment;` asserts that the config made of `text` ([`CaseText`])
/// fails with an error at `key` in the config file whose reason contains `fragment`.
macro_rules! bad_configs {
    ($($(#[$doc:meta])* $name:ident: $text:expr => $key:expr, $fragment:expr;)*) => {
        /// One test per bad config.
        mod bad_config {
            use super::*;
            $(
                $(#[$doc])*
                #[test]
                fn $name() {
                    assert_bad(&CaseText::full($text), $key, $fragment);
                }
            )*
        }
    };
}

bad_configs! {
    /// unknown key in [gateway]
    unknown_key_in_gateway: "[gateway]\nnmae = \"x\"\n"
        => "gateway.nmae", "unknown key (did you mean `name`?)";
    /// unknown top-level section
    unknown_top_level_section: "[gatway]\nname = \"x\"\n"
        => "gatway", "unknown key (did you mean `gateway`?)";
    /// [device] instead of [[device]]
    table_instead_of_array_of_tables: Alone("[device]\nid = \"x\"\n")
        => "device", "expected an array of tables (write [[device]]), found a table";
    /// wrong type
    wrong_type: "[gateway]\nmax_frame_bytes = \"big\"\n"
        => "gateway.max_frame_bytes", "expected an integer, found a string";
    /// frame limit too small
    frame_limit_too_small: "[gateway]\nmax_frame_bytes = 10\n"
        => "gateway.max_frame_bytes", "must be at least 1024 bytes, got 10";
    /// negative integer
    negative_integer: "[gateway]\nmax_frame_bytes = -1\n"
        => "gateway.max_frame_bytes", "must be an integer between 0 and 67108864, got -1";
    /// frame rate zero
    frame_rate_zero: "[gateway]\nmax_frames_per_s = 0\n"
        => "gateway.max_frames_per_s", "must be an integer between 1 and 100000, got 0";
    /// frame rate not a number
    frame_rate_not_a_number: "[gateway]\nmax_frames_per_s = 1.5\n"
        => "gateway.max_frames_per_s", "expected an integer, found a float";
    /// no connections at all
    server_max_connections_zero: "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 0\n"
        => "server.max_connections", "must be an integer between 1 and 65536, got 0";
    /// handshake timeout too long
    server_handshake_timeout_too_long: "[server]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout_s = 3600\n"
        => "server.handshake_timeout_s", "must be an integer between 1 and 300, got 3600";
    /// handshake timeout zero
    server_handshake_timeout_zero: "[server]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout_s = 0\n"
        => "server.handshake_timeout_s", "must be an integer between 1 and 300, got 0";
    /// failed auth limit zero
    server_failed_auth_zero: "[server]\nlisten = \"127.0.0.1:0\"\nmax_failed_auth_per_min = 0\n"
        => "server.max_failed_auth_per_min", "must be an integer between 1 and 10000, got 0";
    /// failed auth limit as a string
    server_failed_auth_string: "[server]\nlisten = \"127.0.0.1:0\"\nmax_failed_auth_per_min = \"ten\"\n"
        => "server.max_failed_auth_per_min", "expected an integer, found a string";
    /// bad log filter
    bad_log_filter: "[gateway]\nlog_level = \"s2gw=loud\"\n"
        => "gateway.log_level", "not a valid tracing filter";
    /// missing required key
    missing_required_key: "[[device]]\nid = \"pv2\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].profile", "missing required key";
    /// duplicate device id
    duplicate_device_id: "[[device]]\nid = \"pv\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].id", "duplicate id `pv` (also device[0].id)";
    /// device and native share an id
    device_and_native_share_an_id: "[server]\nlisten = \"127.0.0.1:0\"\n[[native]]\nid = \"pv\"\ncem = \"home\"\n"
        => "native[0].id", "duplicate id `pv` (also device[0].id)";
    /// invalid id
    invalid_id: "[[device]]\nid = \"pv roof\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].id", "`pv roof` is not a valid id: 1 to 48 of [A-Za-z0-9_-]";
    /// unknown cem reference
    unknown_cem_reference: "[[device]]\nid = \"ev\"\nprofile = \"sim-ev\"\ncem = \"away\"\n[device.sim]\nmodel = \"ev\"\n"
        => "device[1].cem", "unknown cem link `away` (defined: home)";
    /// unknown profile
    unknown_profile: "[[device]]\nid = \"x\"\nprofile = \"sim-nope\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].profile", "unknown profile `sim-nope`: not a built-in profile (sim-pv, sim-ev, sim-battery, sim-heat-pump, sim-meter, sim-dishwasher, sim-hybrid-heat-pump, modbus-sunspec-inverter, modbus-sunspec-storage, modbus-abb-terra-ac, modbus-alfen-eve, modbus-sg-ready, modbus-sdm630, modbus-fronius, modbus-sma, modbus-go-e, modbus-keba-p30, modbus-heidelberg-ec, modbus-solaredge, ble-bthome-meter, ble-relay, mqtt-shelly-gen2-switch, mqtt-tasmota-plug, mqtt-openevse, mqtt-generic, mqtt-dishwasher, mqtt-hybrid-heat-pump)";
    /// profile file that does not exist
    profile_file_that_does_not_exist: "[[device]]\nid = \"x\"\nprofile = \"vendor/inverter.toml\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].profile", "cannot read profile file";
    /// missing token_file
    missing_token_file: "[cem.away]\nurl = \"ws://h/s2\"\ntoken_file = \"missing.token\"\n"
        => "cem.away.token_file", "missing.token: No such file or directory";
    /// plaintext token in the file
    plaintext_token_in_the_file: "[cem.away]\nurl = \"ws://h/s2\"\ntoken = \"hunter2\"\n"
        => "cem.away.token", "plaintext secrets are not accepted in the config file: put the token in a file and set token_file, or set the environment variable S2GW_CEM__AWAY__TOKEN";
    /// plaintext server token
    plaintext_server_token: "[server]\nlisten = \"127.0.0.1:0\"\ntoken = \"hunter2\"\n"
        => "server.token", "S2GW_SERVER__TOKEN";
    /// bad url scheme
    bad_url_scheme: "[cem.away]\nurl = \"http://192.168.1.10/s2\"\n"
        => "cem.away.url", "url scheme must be ws:// or wss://, got http://";
    /// not a url
    not_a_url: "[cem.away]\nurl = \"192.168.1.10\"\n"
        => "cem.away.url", "it must start with ws:// or wss://";
    /// unknown url placeholder
    unknown_url_placeholder: "[cem.away]\nurl = \"ws://h/s2/{device}\"\n"
        => "cem.away.url", "unknown placeholder `{device}`";
    /// ws-client without url
    ws_client_without_url: "[cem.away]\ntransport = \"ws-client\"\n"
        => "cem.away.url", "missing required key";
    /// ping interval too short
    ping_interval_too_short: "[cem.away]\nurl = \"ws://h/s2\"\nping_interval_s = 10\n"
        => "cem.away.ping_interval_s", "must be at least 50 seconds, got 10";
    /// dead_after not after ping
    dead_after_not_after_ping: "[cem.away]\nurl = \"ws://h/s2\"\nping_interval_s = 60\ndead_after_s = 60\n"
        => "cem.away.dead_after_s", "must be longer than ping_interval_s (60 s), got 60";
    /// ca_file on plain ws
    ca_file_on_plain_ws: "[cem.away]\nurl = \"ws://h/s2\"\nca_file = \"s2gw.toml\"\n"
        => "cem.away.ca_file", "ca_file only applies to wss:// urls";
    /// bad pin
    bad_pin: "[cem.away]\nurl = \"wss://h/s2\"\npin_sha256 = \"ab:cd\"\n"
        => "cem.away.pin_sha256", "expected a SHA-256 fingerprint";
    /// unknown transport
    unknown_transport: "[cem.away]\ntransport = \"carrier-pigeon\"\n"
        => "cem.away.transport", "unknown transport `carrier-pigeon`";
    /// a url on an s2connect link
    url_on_s2connect: "[cem.away]\ntransport = \"s2connect\"\nurl = \"wss://h/s2\"\n"
        => "cem.away.url", "url does not apply to transport \"s2connect\": the URL, token and certificate come from pairing";
    /// a pin on an s2connect link
    pin_on_s2connect: "[cem.away]\ntransport = \"s2connect\"\npin_sha256 = \"ab:cd\"\n"
        => "cem.away.pin_sha256", "pin_sha256 does not apply to transport \"s2connect\"";
    /// bad cem link name
    bad_cem_link_name: "[cem.Home-Lan]\nurl = \"ws://h/s2\"\n"
        => "cem.Home-Lan", "a CEM link name must be 1 to 32 of [a-z0-9_]";
    /// tls cert without key
    tls_cert_without_key: "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert_file = \"s2gw.toml\"\n"
        => "server.tls_cert_file", "tls_cert_file is set but tls_key_file is not: give both or neither";
    /// tls file missing
    tls_file_missing: "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"s2gw.toml\"\n"
        => "server.tls_cert_file", "cert.pem does not exist";
    /// listen on a host name
    listen_on_a_host_name: "[server]\nlisten = \"localhost:8080\"\n"
        => "server.listen", "`localhost:8080` is not an IP address and port";
    /// native without [server]
    native_without_server: "[[native]]\nid = \"washer\"\ncem = \"home\"\n"
        => "native[0]", "a native RM connects to the gateway's S2 server at /s2/rm/<id>, but there is no [server] section";
    /// ws-server without [server]
    ws_server_without_server: "[cem.inbound]\ntransport = \"ws-server\"\n"
        => "cem.inbound.transport", "transport \"ws-server\" needs a [server] section";
    /// url on a ws-server link
    url_on_a_ws_server_link: "[server]\nlisten = \"127.0.0.1:0\"\n[cem.inbound]\ntransport = \"ws-server\"\nurl = \"ws://h/s2\"\n"
        => "cem.inbound.url", "url only applies to transport \"ws-client\"";
    /// sim parameter out of range
    sim_parameter_out_of_range: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\nrated_w = -5\n"
        => "device[1].sim.rated_w", "must be a number greater than 0, got -5";
    /// sim parameter for another model
    sim_parameter_for_another_model: "[[device]]\nid = \"bat\"\nprofile = \"sim-battery\"\ncem = \"home\"\n[device.sim]\nmodel = \"battery\"\nphases = 3\n"
        => "device[1].sim.phases", "does not apply to model battery";
    /// sim parameter misspelt
    sim_parameter_misspelt: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\nrated_watts = 5000\n"
        => "device[1].sim.rated_watts", "unknown key (did you mean `rated_w`?)";
    /// sim parameter of the wrong type
    sim_parameter_of_the_wrong_type: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\nrated_w = \"lots\"\n"
        => "device[1].sim.rated_w", "invalid type: string \"lots\"";
    /// unknown sim model
    unknown_sim_model: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"windmill\"\n"
        => "device[1].sim.model", "unknown variant `windmill`";
    /// sim model does not fit the profile
    sim_model_does_not_fit_the_profile: "[[device]]\nid = \"pv2\"\nprofile = \"sim-meter\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].sim.model", "sim model `pv` does not fit profile `sim-meter` of kind meter";
    /// control type not offered by the profile
    control_type_not_offered_by_the_profile: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\ncontrol_types = [\"PEBC\", \"FRBC\"]\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].control_types[1]", "FRBC is not offered by profile `sim-pv` (it offers PEBC, NOT_CONTROLABLE)";
    /// control type misspelt the English way
    control_type_misspelt_the_english_way: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\ncontrol_types = [\"NOT_CONTROLLABLE\"]\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].control_types[0]", "S2 spells it NOT_CONTROLABLE (one L)";
    /// no adapter section
    no_adapter_section: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\n"
        => "device[1]", "no connection section: add one of [device.sim], [device.modbus], [device.ble], [device.mqtt]";
    /// two adapter sections
    two_adapter_sections: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n[device.modbus]\nhost = \"10.0.0.5\"\n"
        => "device[1]", "more than one connection section (sim, modbus): a device has exactly one";
    /// measurement faster than polling
    measurement_faster_than_polling: "[[device]]\nid = \"pv2\"\nprofile = \"sim-pv\"\ncem = \"home\"\npoll_interval_s = 10\nmeasurement_interval_s = 5\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].measurement_interval_s", "must not be shorter than poll_interval_s (10 s)";
    /// bad resource id
    bad_resource_id: "[[device]]\nid = \"pv2\"\nresource_id = \"has space\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[1].resource_id", "`has space` is not an S2 id";
    /// duplicate resource id
    duplicate_resource_id: "[[device]]\nid = \"pv2\"\nresource_id = \"r1\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n\
         [[device]]\nid = \"pv3\"\nresource_id = \"r1\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
        => "device[2].resource_id", "duplicate resource_id r1 (also device[1])";
    /// modbus: unknown key in a register map
    modbus_unknown_key_in_a_register_map: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\n\
         [device.modbus.registers.power]\ntable = \"input\"\naddress = 52\ntype = \"f32\"\nscael = 2\n"
        => "device[1].modbus.registers.power.scael", "unknown key (did you mean `scale`?)";
    /// modbus: endpoint without a port
    modbus_endpoint_without_a_port: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"meter.local\"\n"
        => "device[1].modbus.tcp", "expected HOST:PORT, got \"meter.local\"";
    /// modbus: no bus at all
    modbus_no_bus_at_all: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\nunit = 3\n"
        => "device[1].modbus.tcp", "one of tcp, rtu_over_tcp or serial is required";
    /// modbus: unit id out of range
    modbus_unit_id_out_of_range: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nunit = 300\n"
        => "device[1].modbus.unit", "300";
    /// modbus: unknown device key
    modbus_unknown_device_key: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nhost = \"10.0.0.5\"\n"
        => "device[1].modbus.host", "unknown key";
    /// modbus: serial keys on a TCP device
    modbus_serial_keys_on_a_tcp_device: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nbaud = 9600\n"
        => "device[1].modbus.baud", "applies to a serial line only";
    /// modbus: a charger on/off write without its off value
    modbus_on_without_off: "[[device]]\nid = \"m\"\nprofile = \"modbus-go-e\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\n\
         [device.modbus.commands]\nset_current = [{ register = \"force_state\", on = 0 }]\n"
        => "device[1].modbus.commands.set_current[0]", "`on` and `off` go together";
    /// modbus: proxy keys without a proxy
    modbus_proxy_keys_without_a_proxy: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nproxy_unit = 3\n"
        => "device[1].modbus.proxy_unit", "applies to a proxy only (set `proxy_listen`)";
    /// modbus: proxy address that is not IP:PORT
    modbus_proxy_address_that_is_not_ip_port: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nproxy_listen = \"everywhere\"\n"
        => "device[1].modbus.proxy_listen", "expected IP:PORT";
    /// modbus: proxy writable range of input registers
    modbus_proxy_writable_input_registers: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nproxy_listen = \"127.0.0.1:5020\"\nproxy_writable = [{ table = \"input\", address = 0 }]\n"
        => "device[1].modbus.proxy_writable[0].table", "only holding registers and coils";
    /// modbus: proxy cache older than the poll interval
    modbus_proxy_cache_older_than_the_poll_interval: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\npoll_interval_s = 2\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nproxy_listen = \"127.0.0.1:5020\"\nproxy_cache_ms = 2500\n"
        => "device[1].modbus.proxy_cache_ms", "must not exceed poll_interval_s (2000 ms)";
    /// modbus: two devices with one proxy unit id on one listener
    modbus_two_devices_with_one_proxy_unit: "[[device]]\nid = \"m\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nproxy_listen = \"127.0.0.1:5020\"\n\
         [[device]]\nid = \"n\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:503\"\nproxy_listen = \"127.0.0.1:5020\"\n"
        => "device[2].modbus.proxy_unit", "unit 1 on proxy 127.0.0.1:5020 is also device[1]";
    /// modbus: SunSpec writes with a coil function code
    modbus_sunspec_writes_with_a_coil_function_code: "[[device]]\nid = \"m\"\nprofile = \"modbus-sunspec-inverter\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\nsunspec = { write = \"fc5\" }\n"
        => "device[1].modbus.sunspec.write", "SunSpec points are registers: fc6 or fc16";
    /// modbus: profile without [modbus]
    modbus_profile_without_modbus: "[[device]]\nid = \"m\"\nprofile = \"sim-pv\"\ncem = \"home\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\n"
        => "device[1].modbus", "profile `sim-pv` has no [modbus] table";
    /// ble: bindkey and bindkey_file both given
    ble_bindkey_and_bindkey_file_both_given: "[[device]]\nid = \"b\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n[device.ble]\naddress = \"AA:BB:CC:DD:EE:FF\"\n\
         bindkey = \"231d39c1d7cc1ab1aee224cd096db932\"\nbindkey_file = \"key.txt\"\n"
        => "device[1].ble.bindkey_file", "give either `bindkey` or `bindkey_file`, not both";
    /// ble: neither address nor name
    ble_neither_address_nor_name: "[[device]]\nid = \"b\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n[device.ble]\nstale_after_s = 60\n"
        => "device[1].ble.address", "give `address` (or `name`)";
    /// ble: bad address
    ble_bad_address: "[[device]]\nid = \"b\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n[device.ble]\naddress = \"AA:BB:CC\"\n"
        => "device[1].ble.address", "`AA:BB:CC` is not a Bluetooth address";
    /// ble: misspelt key
    ble_misspelt_key: "[[device]]\nid = \"b\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n[device.ble]\nadress = \"AA:BB:CC:DD:EE:FF\"\n"
        => "device[1].ble.adress", "unknown key (did you mean `address`?)";
    /// ble: short bindkey
    ble_short_bindkey: "[[device]]\nid = \"b\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n[device.ble]\nname = \"meter\"\nbindkey = \"abcd\"\n"
        => "device[1].ble.bindkey", "a bindkey is 32 hexadecimal digits (16 bytes); got 4 characters";
    /// ble: bindkey file missing (relative to the config)
    ble_bindkey_file_missing_relative_to_the_config: "[[device]]\nid = \"b\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n[device.ble]\nname = \"meter\"\nbindkey_file = \"no-such.key\"\n"
        => "device[1].ble.bindkey_file", "cannot read bindkey file";
    /// ble: profile without [ble]
    ble_profile_without_ble: "[[device]]\nid = \"b\"\nprofile = \"modbus-sdm630\"\ncem = \"home\"\n[device.ble]\nname = \"meter\"\n"
        => "device[1].ble", "profile `modbus-sdm630` has no [ble] table";
    /// mqtt: a CEM link on MQTT without [mqtt]
    mqtt_a_cem_link_on_mqtt_without_mqtt: "[cem.broker]\ntransport = \"mqtt\"\n"
        => "cem.broker.transport", "transport \"mqtt\" needs an [mqtt] section";
    /// mqtt: a native RM on MQTT without [mqtt]
    mqtt_a_native_rm_on_mqtt_without_mqtt: "[[native]]\nid = \"n\"\ntransport = \"mqtt\"\ncem = \"home\"\n"
        => "native[0].transport", "transport \"mqtt\" needs an [mqtt] section";
    /// mqtt: unknown native transport
    mqtt_unknown_native_transport: "[server]\nlisten = \"127.0.0.1:0\"\n[[native]]\nid = \"n\"\ntransport = \"ws-client\"\ncem = \"home\"\n"
        => "native[0].transport", "unknown transport `ws-client` (expected \"ws-server\" or \"mqtt\")";
    /// mqtt: an MQTT device without [mqtt]
    mqtt_an_mqtt_device_without_mqtt: "[[device]]\nid = \"plug\"\nprofile = \"mqtt-shelly-gen2-switch\"\ncem = \"home\"\n[device.mqtt]\ndevice = \"shelly-1\"\n"
        => "device[1].mqtt", "an MQTT device needs the [mqtt] section (the broker connection)";
    /// mqtt: missing host
    mqtt_missing_host: "[mqtt]\nport = 1883\n"
        => "mqtt.host", "missing required key";
    /// mqtt: empty host
    mqtt_empty_host: "[mqtt]\nhost = \"\"\n"
        => "mqtt.host", "must not be empty";
    /// mqtt: host given as a URL
    mqtt_host_given_as_a_url: "[mqtt]\nhost = \"mqtt://broker.local:1883\"\n"
        => "mqtt.host", "is a URL: give the host name or address only";
    /// mqtt: host with a port
    mqtt_host_with_a_port: "[mqtt]\nhost = \"broker.local:1883\"\n"
        => "mqtt.host", "the port goes in `port`";
    /// mqtt: port 0
    mqtt_port_0: "[mqtt]\nhost = \"broker\"\nport = 0\n"
        => "mqtt.port", "must be 1 to 65535";
    /// mqtt: port out of range
    mqtt_port_out_of_range: "[mqtt]\nhost = \"broker\"\nport = 70000\n"
        => "mqtt.port", "70000";
    /// web: plaintext password in the file
    web_plaintext_password_in_the_file: "[web]\npassword = \"hunter2\"\n"
        => "web.password", "plaintext secrets are not accepted in the config file: put the password in a file and set password_file, or set the environment variable S2GW_WEB__PASSWORD";
    /// web: reachable from the network without a password
    web_off_loopback_needs_a_password: "[web]\nlisten = \"0.0.0.0:8088\"\n"
        => "web.listen", "0.0.0.0:8088 is reachable from other machines, so the web UI needs a password: set password_file";
    /// web: a host name where an address belongs
    web_listen_is_an_address: "[web]\nlisten = \"gateway.local:8088\"\n"
        => "web.listen", "`gateway.local:8088` is not an IP address and port";
    /// web: a password file that is not there
    web_password_file_missing: "[web]\npassword_file = \"no-such-file\"\n"
        => "web.password_file", "cannot read password file";
    /// web: unknown key
    web_unknown_key: "[web]\nport = 8088\n"
        => "web.port", "unknown";
    /// s2connect: a host name where an address belongs
    s2connect_listen_is_an_address: "[s2connect]\nlisten = \"gw.local:8443\"\n"
        => "s2connect.listen", "`gw.local:8443` is not an IP address and port";
    /// s2connect: a certificate without its key
    s2connect_cert_without_key: "[s2connect]\ntls_cert_file = \"s2gw.toml\"\n"
        => "s2connect.tls_cert_file", "tls_cert_file is set but tls_key_file is not: give both or neither";
    /// s2connect: names beside a certificate of one's own
    s2connect_names_with_own_certificate: "[s2connect]\nnames = [\"gw.local\"]\ntls_cert_file = \"s2gw.toml\"\ntls_key_file = \"s2gw.toml\"\n"
        => "s2connect.names", "names are for the self-signed certificate";
    /// s2connect: no names
    s2connect_no_names: "[s2connect]\nnames = []\n"
        => "s2connect.names", "give at least one name";
    /// s2connect: a name that is not a string
    s2connect_name_not_a_string: "[s2connect]\nnames = [8443]\n"
        => "s2connect.names[0]", "expected a string, found an integer";
    /// s2connect: codes that live no time
    s2connect_code_valid_0: "[s2connect]\ncode_valid_s = 0\n"
        => "s2connect.code_valid_s", "must be an integer between 1 and 3600, got 0";
    /// s2connect: codes that live too long
    s2connect_code_valid_too_long: "[s2connect]\ncode_valid_s = 86400\n"
        => "s2connect.code_valid_s", "3600";
    /// s2connect: one interface written as a string, not a list
    s2connect_advertise_on_not_a_list: "[s2connect]\nadvertise_on = \"eth0\"\n"
        => "s2connect.advertise_on", "expected an array of strings";
    /// s2connect: an interface that is not a name
    s2connect_advertise_on_not_a_string: "[s2connect]\nadvertise_on = [\"eth0\", 2]\n"
        => "s2connect.advertise_on[1]", "expected a string, found an integer";
    /// s2connect: a CEM to long-poll over plain HTTP
    s2connect_long_poll_not_https: "[s2connect]\nlong_poll = [\"http://hems.local:8443/v1/\"]\n"
        => "s2connect.long_poll[0]", "`http://hems.local:8443/v1/` is not an https:// URL";
    /// s2connect: a deployment that is neither
    s2connect_deployment_unknown: "[s2connect]\ndeployment = \"cloud\"\n"
        => "s2connect.deployment", "`cloud` is not \"lan\" or \"wan\"";
    /// s2connect: WAN without the domain the challenge is bound to
    s2connect_wan_without_domain: "[s2connect]\ndeployment = \"wan\"\ntls_cert_file = \"s2gw.toml\"\ntls_key_file = \"s2gw.toml\"\n"
        => "s2connect.domain", "deployment = \"wan\" needs the domain name";
    /// s2connect: a URL where the domain belongs
    s2connect_wan_domain_is_a_url: "[s2connect]\ndeployment = \"wan\"\ndomain = \"https://gw.example.com\"\ntls_cert_file = \"s2gw.toml\"\ntls_key_file = \"s2gw.toml\"\n"
        => "s2connect.domain", "`https://gw.example.com` is not a domain name";
    /// s2connect: a domain on a LAN gateway
    s2connect_domain_on_lan: "[s2connect]\ndomain = \"gw.example.com\"\n"
        => "s2connect.domain", "domain is for deployment = \"wan\"";
    /// s2connect: WAN with the self-signed certificate
    s2connect_wan_self_signed: "[s2connect]\ndeployment = \"wan\"\ndomain = \"gw.example.com\"\n"
        => "s2connect.tls_cert_file", "deployment = \"wan\" needs tls_cert_file and tls_key_file";
    /// s2connect: WAN advertised on DNS-SD
    s2connect_wan_advertised: "[s2connect]\ndeployment = \"wan\"\ndomain = \"gw.example.com\"\ntls_cert_file = \"s2gw.toml\"\ntls_key_file = \"s2gw.toml\"\nadvertise_on = [\"eth0\"]\n"
        => "s2connect.advertise_on", "DNS-SD is for the LAN";
    /// s2connect: WAN long-polling a LAN CEM
    s2connect_wan_long_polls: "[s2connect]\ndeployment = \"wan\"\ndomain = \"gw.example.com\"\ntls_cert_file = \"s2gw.toml\"\ntls_key_file = \"s2gw.toml\"\nlong_poll = [\"https://hems.local/v1/\"]\n"
        => "s2connect.long_poll", "waitForPairing is a LAN-only operation";
    /// s2connect: WAN with no wss:// server for the CEMs to dial
    s2connect_wan_without_server: "[s2connect]\ndeployment = \"wan\"\ndomain = \"gw.example.com\"\ntls_cert_file = \"s2gw.toml\"\ntls_key_file = \"s2gw.toml\"\n"
        => "s2connect.deployment", "needs a [server] section with tls_cert_file and tls_key_file";
    /// s2connect: unknown key
    s2connect_unknown_key: "[s2connect]\nport = 8443\n"
        => "s2connect.port", "unknown";
    /// mqtt: plaintext password in the file
    mqtt_plaintext_password_in_the_file: "[mqtt]\nhost = \"broker\"\nusername = \"gw\"\npassword = \"hunter2\"\n"
        => "mqtt.password", "plaintext secrets are not accepted in the config file: put the password in a file and set password_file, or set the environment variable S2GW_MQTT__PASSWORD";
    /// mqtt: password file missing
    mqtt_password_file_missing: "[mqtt]\nhost = \"broker\"\nusername = \"gw\"\npassword_file = \"nope.password\"\n"
        => "mqtt.password_file", "cannot read password file";
    /// mqtt: password without a username
    mqtt_password_without_a_username: "[mqtt]\nhost = \"broker\"\npassword_file = \"s2gw.toml\"\n"
        => "mqtt.password_file", "a password needs a username";
    /// mqtt: misspelt key
    mqtt_misspelt_key: "[mqtt]\nhost = \"broker\"\nbase_topc = \"home\"\n"
        => "mqtt.base_topc", "did you mean `base_topic`?";
    /// mqtt: unknown protocol
    mqtt_unknown_protocol: "[mqtt]\nhost = \"broker\"\nprotocol = \"v4\"\n"
        => "mqtt.protocol", "unknown variant `v4`";
    /// mqtt: wildcard in the base topic
    mqtt_wildcard_in_the_base_topic: "[mqtt]\nhost = \"broker\"\nbase_topic = \"home/#\"\n"
        => "mqtt.base_topic", "must not contain + # or NUL";
    /// mqtt: keep-alive too short
    mqtt_keep_alive_too_short: "[mqtt]\nhost = \"broker\"\nkeep_alive_s = 1\n"
        => "mqtt.keep_alive_s", "must be 5 to 65535, got 1";
    /// mqtt: state interval too short
    mqtt_state_interval_too_short: "[mqtt]\nhost = \"broker\"\nstate_interval_ms = 10\n"
        => "mqtt.state_interval_ms", "must be at least 100 ms, got 10";
    /// mqtt: heartbeat shorter than the state interval
    mqtt_state_heartbeat_shorter_than_the_interval: "[mqtt]\nhost = \"broker\"\nstate_interval_ms = 5000\nstate_heartbeat_s = 2\n"
        => "mqtt.state_heartbeat_s", "not shorter than state_interval_ms (5000 ms), got 2";
    /// mqtt: heartbeat too long
    mqtt_state_heartbeat_too_long: "[mqtt]\nhost = \"broker\"\nstate_heartbeat_s = 3601\n"
        => "mqtt.state_heartbeat_s", "3600";
    /// mqtt: TLS CA file missing
    mqtt_tls_ca_file_missing: "[mqtt]\nhost = \"broker\"\n[mqtt.tls]\nca_file = \"ca.pem\"\n"
        => "mqtt.tls.ca_file", "ca.pem does not exist";
    /// mqtt: client certificate without its key
    mqtt_client_certificate_without_its_key: "[mqtt]\nhost = \"broker\"\n[mqtt.tls]\nclient_cert_file = \"s2gw.toml\"\n"
        => "mqtt.tls", "give both client_cert_file and client_key_file, or neither";
    /// mqtt: WebSocket keys on an MQTT link
    mqtt_websocket_keys_on_an_mqtt_link: "[mqtt]\nhost = \"broker\"\n[cem.broker]\ntransport = \"mqtt\"\nurl = \"ws://h/s2\"\n"
        => "cem.broker.url", "url only applies to WebSocket transports";
    /// mqtt: a device without its {device}
    mqtt_a_device_without_its_device_placeholder: "[mqtt]\nhost = \"broker\"\n[[device]]\nid = \"plug\"\nprofile = \"mqtt-shelly-gen2-switch\"\ncem = \"home\"\n[device.mqtt]\nstale_after_s = 30\n"
        => "device[1].mqtt.device", "the topics use {device}: set it in [device.mqtt]";
    /// mqtt: misspelt device key
    mqtt_misspelt_device_key: "[mqtt]\nhost = \"broker\"\n[[device]]\nid = \"plug\"\nprofile = \"mqtt-shelly-gen2-switch\"\ncem = \"home\"\n[device.mqtt]\ndevise = \"shelly-1\"\n"
        => "device[1].mqtt.devise", "did you mean `device`?";
    /// mqtt: profile without [mqtt]
    mqtt_profile_without_mqtt: "[mqtt]\nhost = \"broker\"\n[[device]]\nid = \"plug\"\nprofile = \"sim-meter\"\ncem = \"home\"\n[device.mqtt]\ndevice = \"x\"\n"
        => "device[1].mqtt", "profile `sim-meter` has no [mqtt] table";
    /// mqtt: a device id reserved for the gateway's topics
    mqtt_a_device_id_reserved_for_the_gateway_s_topics: "[mqtt]\nhost = \"broker\"\n[[device]]\nid = \"bridge\"\nprofile = \"sim-meter\"\ncem = \"home\"\n[device.sim]\nmodel = \"meter\"\n"
        => "device[1].id", "`bridge` is reserved with [mqtt]";
    /// modbus and ble on one device
    modbus_and_ble_on_one_device: "[[device]]\nid = \"b\"\nprofile = \"ble-bthome-meter\"\ncem = \"home\"\n[device.ble]\nname = \"meter\"\n[device.modbus]\ntcp = \"127.0.0.1:502\"\n"
        => "device[1]", "more than one connection section (modbus, ble)";
}

#[test]
fn syntax_error_names_the_line() {
    let case = Case::new("[gateway]\nname = \"x\"\nlog_level = \n");
    let errors = case.errors(&[]);
    assert_eq!(errors.errors.len(), 1, "{errors}");
    let e = &errors.errors[0];
    assert_eq!(e.file, case.path());
    assert!(e.key.starts_with("line 3, column"), "{e}");
    assert!(e.reason.starts_with("TOML syntax error: "), "{e}");
}

#[test]
fn display_is_one_line_per_error() {
    let case = Case::new(&format!(
        "[gateway]\nnmae = 1\n{CEM}[[device]]\nid = \"x\"\ncem = \"nowhere\"\n"
    ));
    let errors = case.errors(&[]);
    let text = errors.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), errors.errors.len());
    let file = case.path().display().to_string();
    assert!(
        lines.contains(
            &format!("{file}: gateway.nmae: unknown key (did you mean `name`?)").as_str()
        ),
        "{text}"
    );
    assert!(
        lines.contains(&format!("{file}: device[0].profile: missing required key").as_str()),
        "{text}"
    );
    assert!(
        lines.contains(
            &format!("{file}: device[0].cem: unknown cem link `nowhere` (defined: home)").as_str()
        ),
        "{text}"
    );
    assert!(
        lines.contains(&format!("{file}: device[0]: no connection section: add one of [device.sim], [device.modbus], [device.ble], [device.mqtt]").as_str()),
        "{text}"
    );
}

#[test]
fn all_errors_are_collected_not_just_the_first() {
    let text = r#"
[gateway]
max_frame_bytes = "big"
colour = "blue"

[cem.home]
url = "http://x/s2"
ping_interval_s = 5
token_file = "nope.token"

[[device]]
id = "a"
profile = "sim-nope"
cem = "home"
[device.sim]
model = "pv"

[[device]]
id = "a"
profile = "sim-pv"
cem = "elsewhere"
[device.sim]
model = "pv"
rated_w = -1

[[native]]
id = "n"
cem = "home"
"#;
    let case = Case::new(text);
    let e = case.errors(&[]);
    let p = case.path();
    assert_has(&e, &p, "gateway.max_frame_bytes", "expected an integer");
    assert_has(&e, &p, "gateway.colour", "unknown key");
    assert_has(&e, &p, "cem.home.url", "ws:// or wss://");
    assert_has(&e, &p, "cem.home.ping_interval_s", "at least 50");
    assert_has(&e, &p, "cem.home.token_file", "nope.token");
    assert_has(&e, &p, "device[0].profile", "unknown profile `sim-nope`");
    assert_has(&e, &p, "device[1].id", "duplicate id `a`");
    assert_has(&e, &p, "device[1].cem", "unknown cem link `elsewhere`");
    assert_has(&e, &p, "device[1].sim.rated_w", "greater than 0");
    assert_has(&e, &p, "native[0]", "no [server] section");
    // A link with errors is still known: referring to it is not a second error.
    assert!(!e.errors.iter().any(|x| x.key == "device[0].cem"), "{e}");
}

#[test]
fn empty_config_has_nothing_to_serve() {
    let case = Case::new("");
    let e = case.errors(&[]);
    assert_has(
        &e,
        &case.path(),
        "device",
        "no [[device]] or [[native]] entries",
    );
}

#[test]
fn unreadable_file_is_one_error() {
    let e = config::load_with_env(Path::new("/nonexistent/s2gw.toml"), &[]).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].key, "");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/s2gw.toml: cannot read the file: "),
        "{e}"
    );
}

#[test]
fn profile_errors_name_the_profile_file() {
    let profile = r#"
name = "my-inverter"
kind = "windmill"
control_types = ["PEBC", "PEBC", "XBC"]
instruction_processing_delay_ms = "fast"
colour = "red"
[sim]
model = "pv"
rated_w = 0
"#;
    let case = Case::new(&format!(
        "{CEM}[[device]]\nid = \"inv\"\nprofile = \"profiles/my-inverter.toml\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
    ))
    .with_file("profiles/my-inverter.toml", profile);
    let e = case.errors(&[]);
    let pf = case.dir.path().join("profiles/my-inverter.toml");
    assert_has(&e, &pf, "kind", "unknown kind `windmill`");
    assert_has(&e, &pf, "control_types[1]", "PEBC is listed twice");
    assert_has(&e, &pf, "control_types[2]", "unknown control type `XBC`");
    assert_has(
        &e,
        &pf,
        "instruction_processing_delay_ms",
        "expected an integer",
    );
    assert_has(&e, &pf, "colour", "unknown key");
    assert_has(
        &e,
        &case.path(),
        "device[0].profile",
        "is invalid (see its errors)",
    );
}

#[test]
fn profile_defaults_that_fail_validation_name_the_profile_file() {
    let profile = "name = \"weak-pv\"\nkind = \"pv_inverter\"\ncontrol_types = [\"PEBC\"]\n[sim]\nmodel = \"pv\"\nrated_w = 0\n";
    let case = Case::new(&format!(
        "{CEM}[[device]]\nid = \"inv\"\nprofile = \"weak-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\n"
    ))
    .with_file("profiles/weak-pv.toml", profile);
    let e = case.errors(&[]);
    let pf = case.dir.path().join("profiles/weak-pv.toml");
    assert_has(&e, &pf, "sim.rated_w", "greater than 0");
    // The device overriding the bad default fixes it.
    let fixed = Case::new(&format!(
        "{CEM}[[device]]\nid = \"inv\"\nprofile = \"weak-pv\"\ncem = \"home\"\n[device.sim]\nmodel = \"pv\"\nrated_w = 800\n"
    ))
    .with_file("profiles/weak-pv.toml", profile);
    let config = fixed.load(&[]).unwrap();
    let Connection::Sim(sim) = &config.devices[0].connection else {
        panic!("not a sim device")
    };
    assert_eq!(sim.rated_w, Some(800.0));
    assert_eq!(
        config.devices[0].profile.source,
        ProfileSource::File(fixed.dir.path().join("profiles/weak-pv.toml"))
    );
}

#[test]
fn profile_without_sim_table_cannot_drive_a_sim_device() {
    let profile = "name = \"bare\"\nkind = \"meter\"\ncontrol_types = [\"NOT_CONTROLABLE\"]\n";
    let case = Case::new(&format!(
        "{CEM}[[device]]\nid = \"m\"\nprofile = \"./bare.toml\"\ncem = \"home\"\n[device.sim]\nmodel = \"meter\"\n"
    ))
    .with_file("bare.toml", profile);
    let e = case.errors(&[]);
    assert_has(
        &e,
        &case.path(),
        "device[0].sim",
        "profile `bare` has no [sim] table",
    );
}

#[test]
fn local_profile_dir_overrides_a_builtin() {
    let profile = "name = \"sim-pv\"\nkind = \"pv_inverter\"\ncontrol_types = [\"NOT_CONTROLABLE\"]\n[sim]\nmodel = \"pv\"\nrated_w = 300\n";
    let case = Case::new(&format!("{CEM}{DEV}")).with_file("profiles/sim-pv.toml", profile);
    let config = case.load(&[]).unwrap();
    assert_eq!(
        config.devices[0].control_types,
        vec![ControlType::NotControllable]
    );
    let Connection::Sim(sim) = &config.devices[0].connection else {
        panic!("not a sim device")
    };
    assert_eq!(sim.rated_w, Some(300.0));
}

#[test]
fn check_validates_unused_profiles_too() {
    let case = Case::new(&format!("{CEM}{DEV}"))
        .with_file(
            "profiles/unused.toml",
            "name = \"unused\"\nkind = \"toaster\"\ncontrol_types = [\"PEBC\"]\n",
        )
        .with_file("profiles/README.md", "not a profile");
    // `run` does not care about a profile nobody uses…
    assert!(case.load(&[]).is_ok());
    // …but `check` reports it.
    let e = config::check_with_env(&case.path(), &[]).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_has(
        &e,
        &case.dir.path().join("profiles/unused.toml"),
        "kind",
        "unknown kind `toaster`",
    );
    // Used and broken: reported once, not twice.
    let used = Case::new(&format!(
        "{CEM}[[device]]\nid = \"t\"\nprofile = \"broken\"\ncem = \"home\"\n[device.sim]\nmodel = \"meter\"\n"
    ))
    .with_file("profiles/broken.toml", "name = \"broken\"\nkind = \"toaster\"\ncontrol_types = [\"PEBC\"]\n[sim]\nmodel = \"meter\"\n");
    let e = config::check_with_env(&used.path(), &[]).unwrap_err();
    let kind_errors = e.errors.iter().filter(|x| x.key == "kind").count();
    assert_eq!(kind_errors, 1, "{e}");
    // The shipped reference, with the repo's profiles directory next to it, checks clean.
    config::check_with_env(&repo_file("config/s2gw.toml"), &[]).unwrap_or_else(|e| panic!("{e}"));
}

/// A `[[device]]` table for `profile` with the given connection section.
fn adapter_device(id: &str, profile: &str, section: &str) -> String {
    format!("[[device]]\nid = \"{id}\"\nprofile = \"{profile}\"\ncem = \"home\"\n{section}\n")
}

#[test]
fn modbus_profile_errors_name_the_profile_file_and_key() {
    let profile = r#"
name = "my-meter"
kind = "meter"
control_types = ["NOT_CONTROLABLE"]
[modbus]
address_base = 1
timeout_ms = 5
[modbus.registers.power]
table = "input"
address = 0
type = "f32"
[modbus.registers.energy]
table = "input"
address = 10
type = "f32"
poll = "sometimes"
[modbus.registers.relay]
table = "input"
address = 20
write = "fc6"
[modbus.registers.bad]
table = "holding"
adress = 3
[modbus.readings]
power = "power"
soc = "missing"
"#;
    let case = Case::new(&format!(
        "{CEM}{}",
        adapter_device("m", "my-meter", "[device.modbus]\ntcp = \"127.0.0.1:502\"")
    ))
    .with_file("profiles/my-meter.toml", profile);
    let e = config::check_with_env(&case.path(), &[]).unwrap_err();
    let pf = case.dir.path().join("profiles/my-meter.toml");
    // Type-level problems: each one, with its key, all at once.
    assert_has(
        &e,
        &pf,
        "modbus.registers.bad.adress",
        "did you mean `address`?",
    );
    assert_has(&e, &pf, "modbus.registers.energy.poll", "sometimes");
    assert_has(&e, &case.path(), "device[0].profile", "is invalid");

    // With those fixed, the adapter's own validation speaks, still against the profile.
    let fixed = profile
        .replace("poll = \"sometimes\"\n", "")
        .replace("adress = 3", "address = 3");
    let case = case.with_file("profiles/my-meter.toml", &fixed);
    let e = config::check_with_env(&case.path(), &[]).unwrap_err();
    assert_has(
        &e,
        &pf,
        "modbus.registers.power.address",
        "must be 1..=65536",
    );
    assert_has(
        &e,
        &pf,
        "modbus.registers.relay.write",
        "cannot write the input table",
    );
    assert_has(
        &e,
        &pf,
        "modbus.readings.soc",
        "no register named \"missing\"",
    );
    assert_has(&e, &pf, "modbus.timeout_ms", "between 10 and 60000");
    assert!(
        !e.errors.iter().any(|x| x.key == "modbus.tcp"),
        "a profile names no bus; that is the device's job:\n{e}"
    );
}

#[test]
fn a_device_override_is_blamed_on_the_config_not_the_profile() {
    let case = Case::new(&format!(
        "{CEM}{}",
        adapter_device(
            "pv",
            "modbus-sunspec-inverter",
            "[device.modbus]\ntcp = \"127.0.0.1:502\"\nmax_block = 0"
        )
    ));
    let e = case.errors(&[]);
    assert_has(
        &e,
        &case.path(),
        "device[0].modbus.max_block",
        "must be 1..=125",
    );
    assert_eq!(e.errors.len(), 1, "{e}");
}

#[test]
fn ble_profile_errors_name_the_profile_file_and_key() {
    let profile = r#"
name = "my-relay"
kind = "load"
control_types = ["OMBC"]
[ble]
source = "gatt"
service_uuid = "not-a-uuid"
[[ble.readings]]
field = "state"
characteristic = "2a19"
format = "u8"
[[ble.modes]]
name = "on"
min_w = 0
max_w = 100
characteristic = "2a19"
payload = "01"
[[ble.modes]]
name = "off"
min_w = 0
max_w = 0
characteristic = "2a19"
payload = "zz"
"#;
    let case = Case::new(&format!(
        "{CEM}{}",
        adapter_device(
            "r",
            "my-relay",
            "[device.ble]\naddress = \"AA:BB:CC:DD:EE:FF\""
        )
    ))
    .with_file("profiles/my-relay.toml", profile);
    let e = case.errors(&[]);
    let pf = case.dir.path().join("profiles/my-relay.toml");
    assert_has(&e, &pf, "ble.service_uuid", "`not-a-uuid` is not a UUID");
    assert_has(
        &e,
        &pf,
        "ble.modes",
        "exactly one mode must be `default = true`",
    );
    assert_has(&e, &pf, "ble.modes[1].payload", "");
    // A typo inside an array of tables is found with its index.
    let typo = profile.replace("format = \"u8\"", "formt = \"u8\"");
    let case = case.with_file("profiles/my-relay.toml", &typo);
    let e = case.errors(&[]);
    let keys: Vec<&str> = e.errors.iter().map(|x| x.key.as_str()).collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("ble.readings") && k.ends_with("formt")),
        "{e}"
    );
}

#[test]
fn shipped_adapter_profiles_load_and_check_clean() {
    let devices = [
        adapter_device(
            "pv",
            "modbus-sunspec-inverter",
            "[device.modbus]\ntcp = \"127.0.0.1:502\"\nunit = 126\nsunspec = { write = \"fc6\" }",
        ),
        adapter_device(
            "battery",
            "modbus-sunspec-storage",
            "[device.modbus]\nrtu_over_tcp = \"127.0.0.1:8899\"",
        ),
        adapter_device(
            "wallbox",
            "modbus-abb-terra-ac",
            "[device.modbus]\ntcp = \"127.0.0.1:502\"\nunit = 2",
        ),
        adapter_device(
            "eve",
            "modbus-alfen-eve",
            "[device.modbus]\ntcp = \"127.0.0.1:502\"\nunit = 1",
        ),
        adapter_device(
            "heat-pump",
            "modbus-sg-ready",
            "[device.modbus]\nserial = \"/dev/ttyUSB0\"\nbaud = 19200\nparity = \"even\"",
        ),
        adapter_device(
            "grid",
            "modbus-sdm630",
            "[device.modbus]\nserial = \"/dev/ttyUSB0\"\nunit = 2",
        ),
        adapter_device(
            "plug",
            "ble-bthome-meter",
            "[device.ble]\naddress = \"54:48:E6:8F:80:A5\"\nbindkey_file = \"keys/plug.key\"",
        ),
        adapter_device(
            "relay",
            "ble-relay",
            "[device.ble]\nname = \"Boiler relay\"",
        ),
    ];
    let case = Case::new(&format!("{CEM}{}", devices.concat()))
        .with_file("keys/plug.key", "231d39c1d7cc1ab1aee224cd096db932\n");
    let config = config::check_with_env(&case.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.devices.len(), 8);
    let adapters: Vec<&str> = config
        .devices
        .iter()
        .map(|d| d.connection.adapter())
        .collect();
    assert_eq!(
        adapters,
        [
            "modbus", "modbus", "modbus", "modbus", "modbus", "modbus", "ble", "ble"
        ]
    );
    // The device's keys merged over the profile's, key by key.
    let Connection::Modbus(pv) = &config.devices[0].connection else {
        panic!("pv is not a modbus device")
    };
    assert_eq!(pv.connection.unit, Some(126));
    let sunspec = pv.profile.sunspec.as_ref().unwrap();
    assert_eq!(format!("{:?}", sunspec.write), "Some(Fc6)");
    // BLE: not merged; the bindkey file is found next to the config.
    let Connection::Ble(plug) = &config.devices[6].connection else {
        panic!("plug is not a BLE device")
    };
    assert_eq!(
        plug.connection.bindkey_file.as_deref(),
        Some(case.dir.path().join("keys/plug.key").as_path())
    );
    assert!(plug.connection.load_bindkey().unwrap().is_some());
    assert_eq!(plug.profile.stale_after_s, Some(300));
    assert!(
        config
            .summary()
            .contains("modbus tcp://127.0.0.1:502 unit 126")
    );
    assert!(config.summary().contains("ble 54:48:E6:8F:80:A5"));
}

#[test]
fn the_cli_check_accepts_the_shipped_adapter_profiles() {
    let case = Case::new(&format!(
        "{CEM}{}{}",
        adapter_device(
            "grid",
            "modbus-sdm630",
            "[device.modbus]\ntcp = \"127.0.0.1:502\""
        ),
        adapter_device(
            "plug",
            "ble-bthome-meter",
            "[device.ble]\naddress = \"54:48:E6:8F:80:A5\""
        )
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s2gw"))
        .args(["check", "-c"])
        .arg(case.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("OK (2 devices"), "{stdout}");
    if cfg!(feature = "ble") {
        assert!(!stderr.contains("without BLE"), "{stderr}");
    } else {
        // Valid config, but this build cannot drive it: said, not hidden.
        assert!(stderr.contains("warning: BLE device(s) plug"), "{stderr}");
    }
}

/// Without the `ble` feature, `s2gw run` refuses a config with BLE devices at once,
/// naming every one of them, rather than serving resources that can never be measured.
#[cfg(not(feature = "ble"))]
#[test]
fn a_build_without_ble_refuses_to_run_ble_devices() {
    let case = Case::new(&format!(
        "{CEM}{DEV}{}{}",
        adapter_device(
            "plug",
            "ble-bthome-meter",
            "[device.ble]\naddress = \"54:48:E6:8F:80:A5\""
        ),
        adapter_device(
            "relay",
            "ble-relay",
            "[device.ble]\nname = \"Boiler relay\""
        )
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s2gw"))
        .args(["run", "-c"])
        .arg(case.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("BLE device(s) plug, relay cannot start")
            && stderr.contains("built without BLE support"),
        "{stderr}"
    );
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn reference_config_loads_as_shipped() {
    let config = config::load_with_env(&repo_file("config/s2gw.toml"), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.gateway.name, "s2gw");
    assert_eq!(config.gateway.max_frame_bytes, 1_048_576);
    assert_eq!(config.gateway.log_level, "info");
    assert_eq!(config.gateway.max_frames_per_s.get(), 100);
    let server = config.server.as_ref().unwrap();
    assert_eq!(server.max_connections, 128);
    assert_eq!(server.handshake_timeout, Duration::from_secs(10));
    assert_eq!(server.max_failed_auth_per_min, 10);
    assert_eq!(config.cem.len(), 2);
    assert_eq!(config.cem["cloud"].transport, CemTransport::WsServer);
    assert_eq!(config.devices.len(), 5);
    assert_eq!(config.natives.len(), 1);
    let pv = &config.devices[0];
    assert_eq!(pv.name, "Roof PV");
    assert_eq!(pv.poll_interval, Duration::from_secs(1));
    assert_eq!(pv.measurement_interval, Duration::from_secs(10));
    assert_eq!(
        pv.control_types,
        vec![
            ControlType::PowerEnvelopeBasedControl,
            ControlType::NotControllable
        ]
    );
    assert_eq!(
        pv.resource_id.as_str(),
        derive_resource_id("s2gw", "pv-roof").as_str()
    );
    // The url stays a template: the gateway fills in `{id}` and the WebSocket client
    // `{resource_id}` when they dial.
    assert_eq!(
        config.cem["home"].transport,
        CemTransport::WsClient {
            url: "ws://192.168.1.10:8000/s2/{resource_id}".to_string(),
            ca_file: None,
            pin_sha256: None,
        }
    );
    assert!(!config.summary().is_empty());
}

#[test]
fn every_builtin_profile_file_loads() {
    for (name, _) in config::BUILTIN_PROFILES {
        let p = config::load_profile(&repo_file(&format!("config/profiles/{name}.toml")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&p.name, name);
    }
}

#[test]
fn demo_config_loads_with_one_of_each() {
    let config = config::load_str_with_env(DEMO_TOML, Path::new("<demo>/demo.toml"), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut models: Vec<&str> = config
        .devices
        .iter()
        .map(|d| {
            let Connection::Sim(sim) = &d.connection else {
                panic!("{} is not a sim device", d.id)
            };
            sim.model.as_str()
        })
        .collect();
    models.sort_unstable();
    assert_eq!(
        models,
        [
            "battery",
            "dishwasher",
            "ev",
            "heat_pump",
            "hybrid_heat_pump",
            "meter",
            "pv"
        ]
    );
    assert!(config.devices.iter().all(|d| d.cem == "demo"));
    match &config.cem["demo"].transport {
        CemTransport::WsClient { url, .. } => {
            assert!(url.starts_with("ws://127.0.0.1:0/"), "{url}")
        }
        other => panic!("{other:?}"),
    }
    // The process-environment entry point accepts it too.
    assert!(config::load_str(DEMO_TOML, Path::new("<demo>/demo.toml")).is_ok());
}

#[test]
fn environment_overrides_the_file() {
    let case = Case::new(&format!("[gateway]\nlog_level = \"info\"\n{CEM}{DEV}"));
    let config = case
        .load(&[
            ("S2GW_GATEWAY__LOG_LEVEL", "debug"),
            ("S2GW_CEM__HOME__PING_INTERVAL_S", "90"),
            ("S2GW_CEM__HOME__URL", "wss://cem.example/s2/{id}"),
            ("S2GW_CEM__HOME__TOKEN", "123456"),
            // Not below a section: left to the command line.
            ("S2GW_CONFIG", "/etc/s2gw/s2gw.toml"),
            ("HOME", "/root"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.gateway.log_level, "debug");
    let home = &config.cem["home"];
    assert_eq!(home.ping_interval, Duration::from_secs(90));
    assert_eq!(home.token.as_ref().map(|t| t.expose()), Some("123456"));
    let CemTransport::WsClient { url, .. } = &home.transport else {
        panic!("not a ws-client link: {home:?}")
    };
    assert_eq!(url, "wss://cem.example/s2/{id}");
}

#[test]
fn the_s2_limits_default_when_left_out_and_are_read_when_given() {
    let left_out = Case::new(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{CEM}{DEV}"))
        .load(&[])
        .unwrap_or_else(|e| panic!("{e}"));
    let defaults = s2gw_ws::ServerConfig::default();
    let server = left_out.server.as_ref().unwrap();
    assert_eq!(
        (
            server.max_connections,
            server.handshake_timeout,
            server.max_failed_auth_per_min,
            Some(left_out.gateway.max_frames_per_s)
        ),
        (
            defaults.max_connections,
            defaults.handshake_timeout,
            defaults.max_failed_auth_per_min,
            defaults.max_frames_per_s
        )
    );
    let given = Case::new(&format!(
        "[gateway]\nmax_frames_per_s = 7\n[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 3\n\
         handshake_timeout_s = 2\nmax_failed_auth_per_min = 4\n{CEM}{DEV}"
    ))
    .load(&[("S2GW_SERVER__MAX_CONNECTIONS", "5")])
    .unwrap_or_else(|e| panic!("{e}"));
    let server = given.server.as_ref().unwrap();
    assert_eq!(given.gateway.max_frames_per_s.get(), 7);
    assert_eq!(server.max_connections, 5, "the environment wins");
    assert_eq!(server.handshake_timeout, Duration::from_secs(2));
    assert_eq!(server.max_failed_auth_per_min, 4);
}

#[test]
fn environment_token_wins_over_token_file() {
    let case = Case::new(&format!("{CEM}token_file = \"absent.token\"\n{DEV}"));
    // The file does not exist, but the environment's token makes reading it unnecessary.
    let config = case
        .load(&[("S2GW_CEM__HOME__TOKEN", "from-env")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.cem["home"].token.as_ref().map(|t| t.expose()),
        Some("from-env")
    );
    // Without it, the missing file is an error naming the path.
    let e = case.errors(&[]);
    assert_has(&e, &case.path(), "cem.home.token_file", "absent.token");
}

#[test]
fn environment_errors_name_the_variable() {
    let case = Case::new(&format!("{CEM}{DEV}"));
    let e = case.errors(&[
        ("S2GW_GATEWAY__MAX_FRAME_BYTES", "lots"),
        ("S2GW_DEVICE__PV__NAME", "x"),
        ("S2GW_BOGUS__KEY", "1"),
    ]);
    assert_has(
        &e,
        &case.path(),
        "gateway.max_frame_bytes",
        "expected an integer, found a string (set by environment variable S2GW_GATEWAY__MAX_FRAME_BYTES)",
    );
    assert_has(
        &e,
        &case.path(),
        "device.pv.name",
        "cannot override [[device]] entries",
    );
    assert_has(&e, &case.path(), "bogus", "unknown key");
}

#[test]
fn token_file_is_read_and_never_printed() {
    let case = Case::new(&format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\ntoken_file = \"secrets/server.token\"\n\
         [cem.home]\nurl = \"wss://cem.example/s2\"\ntoken_file = \"/TOKEN\"\n{DEV}"
    ))
    .with_file("secrets/server.token", "s3rver-s3cret\n")
    .with_file("cem.token", "c3m-s3cret\n");
    // Absolute path for the CEM's token, relative for the server's.
    let abs = case.dir.path().join("cem.token");
    let text = std::fs::read_to_string(case.path())
        .unwrap()
        .replace("/TOKEN", abs.to_str().unwrap());
    std::fs::write(case.path(), text).unwrap();

    let config = case.load(&[]).unwrap_or_else(|e| panic!("{e}"));
    let server = config.server.as_ref().unwrap();
    assert_eq!(
        server.token.as_ref().map(|t| t.expose()),
        Some("s3rver-s3cret")
    );
    assert_eq!(
        config.cem["home"].token.as_ref().map(|t| t.expose()),
        Some("c3m-s3cret")
    );
    let debug = format!("{config:?} {config:#?}");
    assert!(
        !debug.contains("s3cret"),
        "a secret leaked into Debug output"
    );
    assert!(debug.contains("Secret(***)"));
}

#[test]
fn empty_token_file_is_an_error() {
    let case = Case::new(&format!("{CEM}token_file = \"empty.token\"\n{DEV}"))
        .with_file("empty.token", "\n");
    let e = case.errors(&[]);
    assert_has(&e, &case.path(), "cem.home.token_file", "is empty");
}

#[test]
fn resource_ids_default_to_stable_uuids() {
    let case = Case::new(&format!(
        "[gateway]\nname = \"garage\"\n{CEM}{DEV}[[device]]\nid = \"own\"\nresource_id = \"my-resource\"\nprofile = \"sim-meter\"\ncem = \"home\"\n[device.sim]\nmodel = \"meter\"\n"
    ));
    let a = case.load(&[]).unwrap();
    let b = case.load(&[]).unwrap();
    assert_eq!(
        a.devices[0].resource_id.as_str(),
        b.devices[0].resource_id.as_str()
    );
    assert_eq!(
        a.devices[0].resource_id.as_str(),
        derive_resource_id("garage", "pv").as_str()
    );
    let uuid = uuid::Uuid::parse_str(a.devices[0].resource_id.as_str()).unwrap();
    assert_eq!(uuid.get_version_num(), 5);
    assert_eq!(a.devices[1].resource_id.as_str(), "my-resource");
    // The gateway name is part of the derivation.
    assert_ne!(
        derive_resource_id("garage", "pv").as_str(),
        derive_resource_id("s2gw", "pv").as_str()
    );
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let case = Case::new(&format!(
        "[gateway]\nstate_dir = \"state\"\ntraffic_log = \"log/t.s2log\"\n{CEM}{DEV}"
    ));
    let config = case.load(&[]).unwrap();
    assert_eq!(config.gateway.state_dir, case.dir.path().join("state"));
    assert_eq!(
        config.gateway.traffic_log,
        Some(case.dir.path().join("log/t.s2log"))
    );
    assert_eq!(config.source, case.path());
}

/// The systemd unit: the directives the daemon and the hardening rely on.
mod systemd_unit {
    use super::repo_file;

    fn directives() -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(repo_file("systemd/s2gw.service")).unwrap();
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = line[1..line.len() - 1].to_string();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not a directive: {line}"));
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
        out
    }

    fn values(all: &[(String, String, String)], key: &str) -> Vec<String> {
        all.iter()
            .filter(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.clone())
            .collect()
    }

    #[test]
    fn unit_has_the_required_directives() {
        let all = directives();
        let expect = [
            ("Type", "notify"),
            (
                "ExecStart",
                "/usr/local/bin/s2gw run -c /etc/s2gw/s2gw.toml",
            ),
            ("WatchdogSec", "30"),
            ("NotifyAccess", "main"),
            ("Restart", "on-failure"),
            ("RestartSec", "5"),
            ("DynamicUser", "yes"),
            ("SupplementaryGroups", "dialout"),
            ("StateDirectory", "s2gw"),
            ("ConfigurationDirectory", "s2gw"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateMounts", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            (
                "RestrictAddressFamilies",
                "AF_UNIX AF_INET AF_INET6 AF_BLUETOOTH AF_NETLINK",
            ),
            ("ProtectKernelTunables", "yes"),
            ("ProtectControlGroups", "yes"),
            ("RestrictNamespaces", "yes"),
            ("LockPersonality", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallFilter", "@system-service"),
            ("DevicePolicy", "closed"),
            ("DeviceAllow", "char-ttyUSB rw"),
            ("DeviceAllow", "char-ttyACM rw"),
            ("KillSignal", "SIGTERM"),
        ];
        for (key, value) in expect {
            let got = values(&all, key);
            assert!(
                got.iter().any(|v| v == value),
                "[Service] {key}={value} missing (have {got:?})"
            );
        }
        assert!(
            !values(&all, "TimeoutStopSec").is_empty(),
            "TimeoutStopSec missing"
        );
        assert!(
            all.iter()
                .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target"),
            "WantedBy=multi-user.target missing"
        );
    }
}

/// A broker section every MQTT case can use.
const MQTT: &str =
    "[mqtt]\nhost = \"127.0.0.1\"\nusername = \"gw\"\npassword_file = \"mqtt.password\"\n";

#[test]
fn shipped_mqtt_profiles_load_with_a_broker() {
    let devices = [
        adapter_device(
            "boiler",
            "mqtt-shelly-gen2-switch",
            "[device.mqtt]\ndevice = \"shellyplus1pm-a8032ab12345\"",
        ),
        adapter_device(
            "plug",
            "mqtt-tasmota-plug",
            "[device.mqtt]\ndevice = \"tasmota_8A1B2C\"\nstale_after_s = 30",
        ),
        adapter_device(
            "evse",
            "mqtt-openevse",
            "[device.mqtt]\ndevice = \"openevse-1234\"",
        ),
        adapter_device(
            "meter",
            "mqtt-generic",
            "[device.mqtt]\ndevice = \"home/meter\"",
        ),
    ];
    let case = Case::new(&format!(
        "{CEM}[cem.broker]\ntransport = \"mqtt\"\n{MQTT}{}\
         [[native]]\nid = \"battery\"\ntransport = \"mqtt\"\ncem = \"broker\"\n",
        devices.concat()
    ))
    .with_file("mqtt.password", "  s3cret\n");
    let config = config::check_with_env(&case.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    let mqtt = config.mqtt.as_ref().unwrap();
    assert_eq!(mqtt.client.host, "127.0.0.1");
    assert_eq!(mqtt.client.base_topic, "s2gw");
    assert_eq!(mqtt.state_interval, Duration::from_secs(1));
    assert_eq!(mqtt.state_heartbeat, Duration::from_secs(60));
    let password = mqtt.client.password.as_ref().unwrap();
    assert_eq!(password.expose().trim(), "s3cret");
    assert!(
        !format!("{mqtt:?}").contains("s3cret"),
        "the password never prints"
    );
    assert_eq!(config.cem["broker"].transport, CemTransport::Mqtt);
    assert_eq!(config.natives[0].transport, config::NativeTransport::Mqtt);
    // The device's keys merged over the profile's, key by key.
    let Connection::Mqtt(plug) = &config.devices[1].connection else {
        panic!("plug is not an MQTT device")
    };
    assert_eq!(plug.device.as_deref(), Some("tasmota_8A1B2C"));
    assert_eq!(plug.stale_after_s, 30);
    assert_eq!(plug.power.path, "ENERGY.Power");
    assert!(config.summary().contains("mqtt tele/tasmota_8A1B2C/SENSOR"));
    assert!(config.summary().contains("native battery (mqtt)"));
}

#[test]
fn the_mqtt_password_comes_from_the_environment_first() {
    let case = Case::new(&format!("{CEM}{DEV}{MQTT}")).with_file("mqtt.password", "from-file");
    let env = [("S2GW_MQTT__PASSWORD", "12345")];
    let config = case.load(&env).unwrap_or_else(|e| panic!("{e}"));
    let password = config.mqtt.unwrap().client.password.unwrap();
    // Typed as text, whatever it looks like; the file is not read.
    assert_eq!(password.expose(), "12345");
    // Without the file and without the variable: the missing file is the error.
    let case = Case::new(&format!("{CEM}{DEV}{MQTT}"));
    assert_has(
        &case.errors(&[]),
        &case.path(),
        "mqtt.password_file",
        "cannot read password file",
    );
    // Environment overrides reach the broker keys like any other.
    let case = Case::new(&format!("{CEM}{DEV}{MQTT}")).with_file("mqtt.password", "p");
    let env = [
        ("S2GW_MQTT__PORT", "1884"),
        ("S2GW_MQTT__BASE_TOPIC", "home/gw"),
    ];
    let mqtt = case.load(&env).unwrap().mqtt.unwrap();
    assert_eq!(mqtt.client.effective_port(), 1884);
    assert_eq!(mqtt.client.base_topic, "home/gw");
}

#[test]
fn mqtt_profile_errors_name_the_profile_file_and_key() {
    let profile = r#"
name = "my-plug"
kind = "load"
control_types = ["OMBC", "NOT_CONTROLABLE"]
[mqtt]
power = { topic = "{device}/power", pth = "w" }
[[mqtt.modes]]
name = "on"
min_w = 0
max_w = 100
command = { topic = "{device}/set", payload = "on" }
"#;
    let case = Case::new(&format!(
        "{CEM}{MQTT}{}",
        adapter_device("p", "my-plug", "[device.mqtt]\ndevice = \"plug-1\"")
    ))
    .with_file("mqtt.password", "p")
    .with_file("profiles/my-plug.toml", profile);
    let pf = case.dir.path().join("profiles/my-plug.toml");
    let e = case.errors(&[]);
    assert_has(&e, &pf, "mqtt.power.pth", "did you mean `path`?");
    assert_has(&e, &case.path(), "device[0].profile", "is invalid");
    // Fixed, the adapter's own validation speaks, still against the profile; the
    // profile is never blamed for the `device` only a device section can give.
    let case = case.with_file("profiles/my-plug.toml", &profile.replace("pth", "path"));
    let e = case.errors(&[]);
    assert_has(&e, &pf, "mqtt.release", "needs a release command");
    assert_has(
        &e,
        &pf,
        "mqtt.modes",
        "exactly one mode must be the default",
    );
    assert!(!e.errors.iter().any(|x| x.key.ends_with("device")), "{e}");
}

#[test]
fn a_native_on_mqtt_needs_no_server() {
    let case = Case::new(&format!(
        "{CEM}{MQTT}[[native]]\nid = \"n\"\ntransport = \"mqtt\"\ncem = \"home\"\n"
    ))
    .with_file("mqtt.password", "p");
    let config = case.load(&[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.server.is_none());
}

/// The MQTT examples at the end of the reference config, uncommented (one `# ` off every
/// line, as its text tells people to do), load, given the files they name.
#[test]
fn reference_config_mqtt_examples_load_uncommented() {
    let text = std::fs::read_to_string(repo_file("config/s2gw.toml")).unwrap();
    let marker = "# [mqtt]\n";
    let at = text
        .find(marker)
        .expect("the reference config has an MQTT example");
    let dir = tempfile::tempdir().unwrap();
    let etc = format!("{}/", dir.path().display());
    let uncommented: Vec<String> = text[at..]
        .lines()
        .map(|l| {
            let l = l
                .strip_prefix("# ")
                .unwrap_or(l.strip_prefix('#').unwrap_or(l));
            l.replace("/etc/s2gw/", &etc)
        })
        .collect();
    let full = format!("{}{}\n", &text[..at], uncommented.join("\n"));
    for name in [
        "mqtt.password",
        "mqtt-ca.pem",
        "mqtt-client.pem",
        "mqtt-client.key",
    ] {
        std::fs::write(dir.path().join(name), "x\n").unwrap();
    }
    let file = dir.path().join("s2gw.toml");
    std::fs::write(&file, &full).unwrap();
    let config = config::load_with_env(&file, &[]).unwrap_or_else(|e| panic!("{e}\n{full}"));
    let mqtt = config.mqtt.as_ref().unwrap();
    assert_eq!(mqtt.client.host, "192.168.1.5");
    assert!(mqtt.client.tls.is_some());
    assert!(mqtt.client.password.is_some());
    assert_eq!(config.cem["broker"].transport, CemTransport::Mqtt);
    assert!(
        config
            .devices
            .iter()
            .any(|d| matches!(d.connection, Connection::Mqtt(_)))
    );
    assert_eq!(config.natives.len(), 2);
}

/// A shipped appliance profile (`config/profiles/<profile>.toml`) with `edits` made (each
/// `from` must occur) is saved as the local profile `my-<profile>` of one MQTT device; the
/// config fails with an error at `key` in that profile file whose reason contains
/// `fragment`.
fn assert_bad_mqtt_profile(profile: &str, edits: &[(&str, &str)], key: &str, fragment: &str) {
    let mut text = std::fs::read_to_string(repo_file(&format!("config/profiles/{profile}.toml")))
        .unwrap()
        .replace(
            &format!("name = \"{profile}\""),
            &format!("name = \"my-{profile}\""),
        );
    for (from, to) in edits {
        assert!(text.contains(from), "{profile} has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let case = Case::new(&format!(
        "{CEM}{MQTT}{}",
        adapter_device(
            "appliance",
            &format!("my-{profile}"),
            "[device.mqtt]\ndevice = \"dev-1\""
        )
    ))
    .with_file("mqtt.password", "p")
    .with_file(&format!("profiles/my-{profile}.toml"), &text);
    let errors = case.errors(&[]);
    let file = case.dir.path().join(format!("profiles/my-{profile}.toml"));
    assert_has(&errors, &file, key, fragment);
    assert_has(&errors, &case.path(), "device[0].profile", "is invalid");
}

/// The shipped appliance profiles with one mistake each: one `#[test]` per case.
/// `name: profile, [(from, to), …] => key, fragment;` (see [`assert_bad_mqtt_profile`]).
macro_rules! bad_mqtt_profiles {
    ($($(#[$doc:meta])* $name:ident: $profile:expr, [$(($from:expr, $to:expr)),*] => $key:expr, $fragment:expr;)*) => {
        /// One test per bad appliance profile.
        mod bad_mqtt_profile {
            use super::*;
            $(
                $(#[$doc])*
                #[test]
                fn $name() {
                    assert_bad_mqtt_profile($profile, &[$(($from, $to)),*], $key, $fragment);
                }
            )*
        }
    };
}

const DW: &str = "mqtt-dishwasher";
const HHP: &str = "mqtt-hybrid-heat-pump";

bad_mqtt_profiles! {
    /// a task state mapped to no known step
    task_state_mapped_to_an_unknown_step: DW, [("Pause = \"paused\"", "Pause = \"halted\"")]
        => "mqtt.task.state.map.Pause", "unknown variant `halted`";
    /// no state means running
    task_states_without_running: DW, [("Run = \"running\"", "Run = \"paused\"")]
        => "mqtt.task.state.map", "must map at least one state to waiting and one to running";
    /// a misspelt task key
    task_key_misspelt: DW, [("window_h = 8", "windo_h = 8")]
        => "mqtt.task.windo_h", "did you mean `window_h`?";
    /// a window of no time
    task_window_of_zero_hours: DW, [("window_h = 8", "window_h = 0")]
        => "mqtt.task.window_h", "must be more than 0 and at most 168";
    /// both elapsed and remaining
    task_with_elapsed_and_remaining: DW, [("window_h = 8", "window_h = 8\nelapsed = { topic = \"x\" }")]
        => "mqtt.task.remaining", "give elapsed or remaining, not both";
    /// no start command
    task_without_start: DW, [("start = {", "# start = {")]
        => "mqtt.task.start", "missing required key";
    /// a start command that cannot say which programme
    task_start_without_programme_placeholder: DW, [("'{\"program\":{programme}}'", "'{\"program\":8196}'")]
        => "mqtt.task.start", "must say which programme: put {programme} in its topic or payload";
    /// an interruptible programme and no pause command
    task_interruptible_without_pause: DW, [("pause = {", "# pause = {")]
        => "mqtt.task.pause", "needed: a programme is interruptible";
    /// an unknown release behaviour
    task_unknown_on_release: DW, [("on_release = \"resume\"", "on_release = \"restart\"")]
        => "mqtt.task.on_release", "unknown variant `restart`";
    /// a misspelt programmes table
    programmes_table_misspelt: DW, [("[[mqtt.programmes]]", "[[mqtt.programmez]]")]
        => "mqtt.programmez", "did you mean `programmes`?";
    /// a phase of no time
    programme_phase_of_zero_seconds: DW, [("{ duration_s = 600,", "{ duration_s = 0,")]
        => "mqtt.programmes[0].phases[0].duration_s", "must be 1 to 86400";
    /// a phase without its power
    programme_phase_without_power: DW, [("{ duration_s = 600, power_w = 120 }", "{ duration_s = 600 }")]
        => "mqtt.programmes[0].phases[0].power_w", "missing required key";
    /// two programmes of one name
    programme_name_twice: DW, [("name = \"quick\"", "name = \"eco\"")]
        => "mqtt.programmes[1].name", "is used by another programme";
    /// one device value for two programmes
    programme_value_twice: DW, [("values = [\"8195\"]", "values = [\"8196\"]")]
        => "mqtt.programmes[1].values", "a value is already another programme's";
    /// actuators without a demand to meet
    actuators_without_demand: HHP, [
        ("[mqtt.demand]", "# [mqtt.demand]"),
        ("present = {", "# present = {"),
        ("forecast = {", "# forecast = {"),
        ("forecast_step_s = 3600", "# forecast_step_s = 3600")
    ] => "mqtt.demand", "actuators need a [mqtt.demand] table";
    /// a demand without its present value
    demand_without_present: HHP, [("present = {", "# present = {")]
        => "mqtt.demand.present", "missing required key";
    /// an empty demand topic
    demand_topic_empty: HHP, [("topic = \"{device}/ctlv2/HeatDemand\"", "topic = \"\"")]
        => "mqtt.demand.present.topic", "must not be empty";
    /// a forecast step that is too short
    demand_forecast_step_too_short: HHP, [("forecast_step_s = 3600", "forecast_step_s = 10")]
        => "mqtt.demand.forecast_step_s", "must be 60 to 86400";
    /// an unknown fuel
    actuator_unknown_fuel: HHP, [("fuel = \"gas\"", "fuel = \"oil\"")]
        => "mqtt.actuators[1].fuel", "unknown variant `oil`";
    /// no default mode
    actuator_without_default_mode: HHP, [("power_max_w = 1715\ndefault = true", "power_max_w = 1715")]
        => "mqtt.actuators[0].modes", "exactly one mode must be the default";
    /// a supply range upside down
    actuator_mode_supply_reversed: HHP, [("supply_max = 6000", "supply_max = 600")]
        => "mqtt.actuators[0].modes[1].supply_max", "needs supply_min <= supply_max";
    /// a power range upside down
    actuator_mode_power_reversed: HHP, [("power_max_w = 1715", "power_max_w = 100")]
        => "mqtt.actuators[0].modes[1].power_max_w", "needs power_min_w <= power_max_w";
    /// one device value for two modes
    actuator_mode_value_twice: HHP, [("values = [\"on\"]\nsupply_min = 3000", "values = [\"off\"]\nsupply_min = 3000")]
        => "mqtt.actuators[1].modes[1].values", "a value is already another mode's";
    /// two actuators of one name
    actuator_name_twice: HHP, [("name = \"boiler\"", "name = \"heat_pump\"")]
        => "mqtt.actuators[1].name", "is used by another actuator";
    /// no way to set an actuator's modes
    actuator_without_set: HHP, [("set = { topic = \"{device}/hmu/SetMode/set\"", "# set = { topic = \"{device}/hmu/SetMode/set\"")]
        => "mqtt.actuators[0].set", "needed unless every mode has its own command";
    /// a misspelt actuator key
    actuator_key_misspelt: HHP, [("min_on_s = 300", "min_on = 300")]
        => "mqtt.actuators[0].min_on", "did you mean `min_on_s`?";
    /// no release for an actuator and none for the device
    demand_driven_without_release: HHP, [("release = { topic = \"{device}/bai", "# release = { topic = \"{device}/bai")]
        => "mqtt.release", "a demand-driven device needs a release command (the fail-safe)";
}

#[test]
fn shipped_appliance_profiles_load_with_a_broker() {
    let devices = [
        adapter_device(
            "dishwasher",
            "mqtt-dishwasher",
            "[device.mqtt]\ndevice = \"dishwasher\"\npower = { topic = \"shellyplusplugs-1/status/switch:0\", path = \"apower\" }",
        ),
        adapter_device(
            "hybrid",
            "mqtt-hybrid-heat-pump",
            "[device.mqtt]\ndevice = \"ebusd\"",
        ),
    ];
    let case =
        Case::new(&format!("{CEM}{MQTT}{}", devices.concat())).with_file("mqtt.password", "p");
    let config = config::check_with_env(&case.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.devices[0].control_types,
        [
            ControlType::PowerProfileBasedControl,
            ControlType::NotControllable
        ]
    );
    assert_eq!(
        config.devices[1].control_types,
        [
            ControlType::DemandDrivenBasedControl,
            ControlType::NotControllable
        ]
    );
    let Connection::Mqtt(dw) = &config.devices[0].connection else {
        panic!("the dishwasher is not an MQTT device")
    };
    // The device's power replaces the profile's; the task is the profile's.
    assert_eq!(dw.power.topic, "shellyplusplugs-1/status/switch:0");
    assert_eq!(dw.programmes.len(), 2);
    assert!(dw.task.is_some());
}

#[test]
fn s2connect_defaults_and_own_certificate_files() {
    let case = Case::new(&format!("{CEM}{DEV}[s2connect]\n"));
    let section = case.load(&[]).unwrap().s2connect.unwrap();
    assert_eq!(section.listen.to_string(), config::DEFAULT_S2CONNECT_LISTEN);
    assert_eq!(
        section.identity,
        s2gw_s2connect::IdentitySource::SelfSigned {
            names: vec![config::DEFAULT_S2CONNECT_NAME.into()]
        }
    );
    assert_eq!(section.code_validity, Duration::from_secs(300));
    assert_eq!(section.advertise_on, Some(s2gw_s2connect::Interfaces::All));

    let case = Case::new(&format!("{CEM}{DEV}[s2connect]\nadvertise_on = []\n"));
    let section = case.load(&[]).unwrap().s2connect.unwrap();
    assert_eq!(section.advertise_on, None, "[] turns advertising off");

    let case = Case::new(&format!(
        "{CEM}{DEV}[s2connect]\nlisten = \"127.0.0.1:9443\"\ntls_cert_file = \"pair.crt\"\n\
         tls_key_file = \"pair.key\"\ncode_valid_s = 60\nadvertise_on = [\"eth0\"]\n\
         long_poll = [\"https://hems.local:8443/v1/\"]\n"
    ))
    .with_file("pair.crt", "")
    .with_file("pair.key", "");
    let section = case.load(&[]).unwrap().s2connect.unwrap();
    assert_eq!(section.listen.port(), 9443);
    assert_eq!(
        section.identity,
        s2gw_s2connect::IdentitySource::Files {
            cert_file: case.dir.path().join("pair.crt"),
            key_file: case.dir.path().join("pair.key"),
        }
    );
    assert_eq!(section.code_validity, Duration::from_secs(60));
    assert_eq!(
        section.advertise_on,
        Some(s2gw_s2connect::Interfaces::Named(vec!["eth0".into()]))
    );
    assert_eq!(
        section.long_poll,
        vec!["https://hems.local:8443/v1/".to_string()]
    );
}
