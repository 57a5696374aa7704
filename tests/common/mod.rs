//! The end-to-end test harness, one file per harness: a test CEM on s2-kit's real
//! `CemSession` over loopback WebSockets ([`cem`]) or MQTT ([`mqtt`], with the broker and
//! a plain MQTT client), the API both share ([`session`]), the daemon as a child process
//! ([`daemon`]) and its commands ([`cli`]), the official S2 JSON schemas ([`schemas`]) and the other oracles
//! ([`oracle`]), a plain HTTP/1.1 client for the web UI ([`http`]), the benches' latency figures
//! ([`latency`]), Python peers
//! ([`python_peer`]), the pymodbus device simulator that can
//! reboot ([`modbus_peer`]), the fault rigs of the soak and its short forms ([`faults`]),
//! the s2-python RM scenario run against either CEM ([`s2python`]), messages built from
//! descriptions ([`messages`]), simulated devices' config snippets ([`configs`]), paths
//! ([`paths`]), awaited queues ([`queue`]), an S2 Connect CEM on s2-kit's server, LAN or
//! WAN ([`connect_cem`]), and a test CA for WAN endpoints ([`pki`]).
//!
//! Every wait is on a channel, bounded by a timeout that only turns a hang into a
//! failure; nothing here sleeps to let something happen.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err,
    missing_docs
)]

mod cem;
mod cli;
mod configs;
mod connect_cem;
mod daemon;
pub mod faults;
mod http;
pub mod latency;
mod messages;
mod modbus_peer;
mod mqtt;
mod oracle;
mod paths;
mod pki;
mod python_peer;
mod queue;
mod s2python;
mod schemas;
mod session;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use self::{
    cem::{CemConn, Ended, TestCem},
    cli::{s2gw, s2gw_with, text},
    configs::{battery, meter, pv, sim_devices},
    connect_cem::{CEM_CODE, CemDeployment, ConnectCem, acme_hub, connect_cem, pairing_url},
    daemon::{Daemon, free_port, strip_ansi},
    http::{HttpReply, http},
    messages::{
        ddbc_instruction, frbc_instruction, ids_in, is_uuid, ombc_instruction, pebc_instruction,
        ppbc_pause, ppbc_resume, ppbc_schedule, status_of, total_power,
    },
    modbus_peer::{M123, M123_ENA, M123_PCT, M123_RVRT, ModbusPeer},
    mqtt::{Broker, MQTT_PASSWORD, MQTT_USER, MqttCem, MqttMsg, MqttPeer},
    oracle::assert_emitted_valid,
    paths::{ha_python, python, shared_dir, workspace},
    pki::Pki,
    python_peer::PythonPeer,
    queue::{GUARD, Queue, within},
    s2python::{check_s2python, s2python_rm_scenario, spawn_s2python_rm},
    schemas::Schemas,
    session::{Carrier, CemSide, Events, Frames},
};
