//! A tiny gateway for the tests: starts the MQTT client (with the bridge LWT) and a state
//! mirror for one device, prints `ready` once connected, and runs until killed. The tests
//! kill it with SIGKILL to see the broker publish the offline LWT.
//!
//! Usage: `s2gw-mqtt-lwt-probe PORT BASE USER PASSWORD_FILE`

use s2gw_core::device::DeviceKind;
use s2gw_mqtt::{DeviceState, Mqtt, MqttConfig, Secret, StateMirror};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, base, user, password_file] = args.as_slice() else {
        eprintln!("usage: s2gw-mqtt-lwt-probe PORT BASE USER PASSWORD_FILE");
        return std::process::ExitCode::from(2);
    };
    let Ok(password) = std::fs::read_to_string(password_file) else {
        eprintln!("cannot read {password_file}");
        return std::process::ExitCode::from(2);
    };
    let mut config = MqttConfig::new("127.0.0.1");
    config.port = port.parse().ok();
    config.base_topic = base.clone();
    config.client_id = Some(format!("probe-{base}"));
    config.username = Some(user.clone());
    config.password = Some(Secret::new(password));
    let shutdown = s2gw_core::CancellationToken::new();
    let (handle, task) = match Mqtt::start(config, shutdown) {
        Ok(started) => started,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::from(1);
        }
    };
    let (mirror, _mirror_task) =
        StateMirror::start(handle.clone(), vec!["probe".to_string()], "probe");
    let mut state = DeviceState::new("probe", "Probe", DeviceKind::Meter);
    state.available = true;
    state.power_w = Some(1.0);
    mirror.publish_state(state).await;
    let mut status = handle.status();
    if status.wait_for(|s| s.connected).await.is_ok() {
        println!("ready");
    }
    let _ = task.await;
    std::process::ExitCode::SUCCESS
}
