//! Daemon config snippets the MQTT and Home Assistant tests and the scale benches share:
//! simulated devices.

use std::time::{SystemTime, UNIX_EPOCH};

/// A simulated PV at local noon whatever the time (6 kW, no clouds), like e2e_daemon's.
pub fn pv(id: &str, cem: &str, extra: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let utc_h = (secs % 86_400.0) / 3600.0;
    let offset_min = ((12.0 - utc_h) * 60.0).round() as i64;
    format!(
        "[[device]]\nid = \"{id}\"\nname = \"Roof PV\"\ncem = \"{cem}\"\n{extra}\
         poll_interval_s = 1\nmeasurement_interval_s = 1\nprofile = \"sim-pv\"\n\
         [device.sim]\nmodel = \"pv\"\nrated_w = 6000\ncloudiness = 0\nsunrise_h = 6\n\
         sunset_h = 18\nutc_offset_min = {offset_min}\n"
    )
}

/// A simulated home battery `battery`, half full.
pub fn battery(cem: &str) -> String {
    format!(
        "[[device]]\nid = \"battery\"\nname = \"Home battery\"\ncem = \"{cem}\"\n\
         poll_interval_s = 1\nmeasurement_interval_s = 1\nprofile = \"sim-battery\"\n\
         [device.sim]\nmodel = \"battery\"\ninitial_soc = 50\n"
    )
}

/// A simulated meter `meter`, without a name of its own.
pub fn meter(cem: &str) -> String {
    format!(
        "[[device]]\nid = \"meter\"\ncem = \"{cem}\"\npoll_interval_s = 1\n\
         measurement_interval_s = 1\nprofile = \"sim-meter\"\n[device.sim]\nmodel = \"meter\"\n"
    )
}

/// `n` simulated devices on CEM link `cem`, rotating through the sim models so every
/// control type is at work, with ids `<model>-<i>`.
pub fn sim_devices(n: usize, cem: &str) -> String {
    const MODELS: [&str; 5] = ["pv", "ev", "battery", "heat_pump", "meter"];
    let mut text = String::new();
    for i in 0..n {
        let model = MODELS[i % MODELS.len()];
        text.push_str(&format!(
            "\n[[device]]\nid = \"{model}-{i}\"\nprofile = \"sim-{}\"\ncem = \"{cem}\"\n\
             [device.sim]\nmodel = \"{model}\"\n",
            model.replace('_', "-")
        ));
    }
    text
}
