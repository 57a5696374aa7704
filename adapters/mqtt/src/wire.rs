//! rumqttc's two clients (MQTT 3.1.1 and 5) behind one face, so the rest of the crate
//! never cares which protocol version is spoken.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::LastWill as LastWill5;
use rumqttc::{NetworkOptions, QoS, TlsConfiguration, Transport};

use crate::{MqttConfig, MqttError, Protocol};

/// The payload of the bridge LWT and of an orderly stop.
pub(crate) const OFFLINE: &[u8] = br#"{"state":"offline"}"#;
/// The payload published on every connect.
pub(crate) const ONLINE: &[u8] = br#"{"state":"online"}"#;

/// QoS 1 publishes a connection keeps in flight before it waits for acknowledgements.
///
/// Plenty for order-keeping throughput (an MQTT 5 broker may allow fewer through its
/// receive maximum), and it bounds memory: rumqttc's MQTT 5 client allocates a slot per possible
/// in-flight publish up front, and without a limit that is 65,535 slots, 14 MB per
/// connection.
pub const IN_FLIGHT: u16 = 100;

/// Sending half: cheap to clone, used from any task.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Receiving half: polled by the connection task only.
pub(crate) enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What one poll produced, in protocol-neutral terms.
pub(crate) enum Polled {
    /// A CONNACK: the connection is up.
    Connected {
        /// Whether the broker kept the previous session.
        session_present: bool,
    },
    /// A PUBLISH from the broker.
    Message {
        topic: String,
        payload: Bytes,
        retained: bool,
    },
    /// Our DISCONNECT went out.
    DisconnectSent,
    /// Anything else (acks, pings).
    Other,
}

/// Build the client pair from a validated config. `bridge_state` is the LWT topic.
pub(crate) fn build(config: &MqttConfig, bridge_state: &str) -> Result<(Client, Loop), MqttError> {
    let transport = match &config.tls {
        Some(tls) => {
            Transport::tls_with_config(TlsConfiguration::Rustls(crate::tls::client_config(tls)?))
        }
        None => Transport::tcp(),
    };
    let mut network = NetworkOptions::new();
    // Nagle adds ~40 ms to small request/answer exchanges on loopback and LANs.
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    let keep_alive = Duration::from_secs(config.keep_alive_s.max(5));
    let (host, port, id) = (
        config.host.clone(),
        config.effective_port(),
        config.effective_client_id(),
    );
    let password = config
        .password
        .as_ref()
        .map(|p| p.expose().to_string())
        .unwrap_or_default();
    let packet = config.max_packet_bytes;
    match config.protocol {
        Protocol::V311 => {
            let mut options = rumqttc::MqttOptions::new(id, host, port);
            options
                .set_keep_alive(keep_alive)
                .set_clean_session(!config.persistent_session)
                .set_max_packet_size(packet, packet)
                .set_inflight(IN_FLIGHT)
                .set_transport(transport)
                .set_last_will(rumqttc::LastWill::new(
                    bridge_state,
                    OFFLINE,
                    QoS::AtLeastOnce,
                    true,
                ));
            if let Some(user) = &config.username {
                options.set_credentials(user.clone(), password);
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, config.queue_capacity);
            eventloop.set_network_options(network);
            Ok((Client::V4(client), Loop::V4(Box::new(eventloop))))
        }
        Protocol::V5 => {
            let mut options = rumqttc::v5::MqttOptions::new(id, host, port);
            options
                .set_keep_alive(keep_alive)
                .set_clean_start(!config.persistent_session)
                .set_outgoing_inflight_upper_limit(IN_FLIGHT)
                .set_max_packet_size(Some(u32::try_from(packet).unwrap_or(u32::MAX)))
                .set_transport(transport)
                .set_network_options(network)
                .set_last_will(LastWill5::new(
                    bridge_state,
                    OFFLINE,
                    QoS5::AtLeastOnce,
                    true,
                    None,
                ));
            if config.persistent_session {
                // MQTT 5 ends a session at disconnect unless told how long to keep it.
                options.set_session_expiry_interval(Some(config.session_expiry_s));
            }
            if let Some(user) = &config.username {
                options.set_credentials(user.clone(), password);
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, config.queue_capacity);
            Ok((Client::V5(client), Loop::V5(Box::new(eventloop))))
        }
    }
}

impl Client {
    /// Queue a QoS 1 publish; waits while the request queue is full.
    pub(crate) async fn publish(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
    ) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|_| MqttError::Stopped),
            Client::V5(c) => c
                .publish_bytes(topic, QoS5::AtLeastOnce, retain, payload)
                .await
                .map_err(|_| MqttError::Stopped),
        }
    }

    /// Queue a QoS 1 publish without waiting; fails when the queue is full.
    pub(crate) fn try_publish(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
    ) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .map_err(|_| MqttError::Stopped),
            Client::V5(c) => c
                .try_publish(topic, QoS5::AtLeastOnce, retain, payload)
                .map_err(|_| MqttError::Stopped),
        }
    }

    /// Queue a QoS 1 subscription.
    pub(crate) async fn subscribe(&self, filter: String) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|_| MqttError::Stopped),
            Client::V5(c) => c
                .subscribe(filter, QoS5::AtLeastOnce)
                .await
                .map_err(|_| MqttError::Stopped),
        }
    }

    /// Queue an unsubscription.
    pub(crate) async fn unsubscribe(&self, filter: String) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c.unsubscribe(filter).await.map_err(|_| MqttError::Stopped),
            Client::V5(c) => c.unsubscribe(filter).await.map_err(|_| MqttError::Stopped),
        }
    }

    /// Queue a DISCONNECT without waiting.
    pub(crate) fn try_disconnect(&self) -> Result<(), MqttError> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|_| MqttError::Stopped),
            Client::V5(c) => c.try_disconnect().map_err(|_| MqttError::Stopped),
        }
    }
}

impl Loop {
    /// Drive the connection one step; an error means the connection is down (the next
    /// call dials again).
    pub(crate) async fn poll(&mut self) -> Result<Polled, String> {
        match self {
            Loop::V4(l) => match l.poll().await.map_err(|e| e.to_string())? {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => Ok(Polled::Connected {
                    session_present: ack.session_present,
                }),
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Ok(Polled::Message {
                    topic: p.topic,
                    payload: p.payload,
                    retained: p.retain,
                }),
                rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect) => {
                    Ok(Polled::DisconnectSent)
                }
                _ => Ok(Polled::Other),
            },
            Loop::V5(l) => match l.poll().await.map_err(|e| e.to_string())? {
                rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(ack)) => {
                    Ok(Polled::Connected {
                        session_present: ack.session_present,
                    })
                }
                rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p)) => {
                    // A topic that is not UTF-8 is a protocol violation; keep it visible.
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    Ok(Polled::Message {
                        topic,
                        payload: p.payload,
                        retained: p.retain,
                    })
                }
                rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect) => {
                    Ok(Polled::DisconnectSent)
                }
                _ => Ok(Polled::Other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both protocol versions keep the same window; on MQTT 5 an unset limit would mean
    /// 65,535 pre-allocated slots, 14 MB per connection.
    #[test]
    fn both_protocols_bound_the_publishes_in_flight() {
        let mut config = MqttConfig::new("127.0.0.1");
        config.protocol = Protocol::V5;
        let Ok((_, Loop::V5(eventloop))) = build(&config, "s2gw/bridge/state") else {
            panic!("an MQTT 5 client");
        };
        assert_eq!(
            eventloop.options.get_outgoing_inflight_upper_limit(),
            Some(IN_FLIGHT)
        );
        config.protocol = Protocol::V311;
        let Ok((_, Loop::V4(eventloop))) = build(&config, "s2gw/bridge/state") else {
            panic!("an MQTT 3.1.1 client");
        };
        assert_eq!(eventloop.mqtt_options.inflight(), IN_FLIGHT);
    }
}
