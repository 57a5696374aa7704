//! The bridge topics: `<base>/bridge/info` and `<base>/bridge/health` (retained, for the
//! gateway device's entities in Home Assistant) and request/response on
//! `<base>/bridge/request/<cmd>` → `<base>/bridge/response/<cmd>`, answered from data the
//! daemon provides through [`BridgeData`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use s2gw_core::LogThrottle;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::client::{Inbound, MqttHandle};

/// Requests larger than this are refused unread: a request is a few parameters.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How often `bridge/info` and `bridge/health` are rebuilt and re-published when they
/// changed.
const INFO_REFRESH: Duration = Duration::from_secs(10);

/// What the daemon tells the bridge. Called from the bridge task; keep calls cheap
/// (a snapshot of watch channels, not I/O).
pub trait BridgeData: Send + Sync {
    /// `bridge/info`: at least `version`, `resources` and `links`.
    fn info(&self) -> Value;
    /// The answer to `devices`: every device with its state.
    fn devices(&self) -> Value;
    /// The answer to `health`: liveness of links, devices, the bus. Published retained
    /// on `bridge/health` too, without `uptime_s` (which would make every refresh a
    /// change) and `bus` (counters that change with every message): give `started`
    /// instead.
    fn health(&self) -> Value;
    /// The answer to `resource` for a resource id (or device id), `None` when unknown.
    fn resource(&self, id: &str) -> Option<Value>;
}

/// Start the bridge: publishes `bridge/info` (retained, re-published when it changes
/// and after every reconnect) and answers requests until the client's shutdown.
pub fn spawn_bridge(handle: MqttHandle, data: Arc<dyn BridgeData>) -> JoinHandle<()> {
    tokio::spawn(run(handle, data))
}

async fn run(handle: MqttHandle, data: Arc<dyn BridgeData>) {
    let shutdown = handle.shutdown_token();
    let Ok(mut requests) = handle
        .subscribe(&handle.topic("bridge/request/+"), 256)
        .await
    else {
        return;
    };
    let mut last_info = Value::Null;
    let mut last_health = Value::Null;
    let mut refresh = tokio::time::interval(INFO_REFRESH);
    let mut dropped = LogThrottle::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(request) = requests.recv() => {
                if answer(&handle, data.as_ref(), &request, &mut dropped).await.is_err() {
                    return;
                }
            }
            _ = refresh.tick() => {
                let info = data.info();
                if info != last_info {
                    if handle.publish_retained(handle.topic("bridge/info"), info.to_string()).await.is_err() {
                        return;
                    }
                    last_info = info;
                }
                let health = retained_health(data.health());
                if health != last_health {
                    if handle.publish_retained(handle.topic("bridge/health"), health.to_string()).await.is_err() {
                        return;
                    }
                    last_health = health;
                }
            }
        }
    }
}

/// The health document as retained: only what changes when something happens.
fn retained_health(mut health: Value) -> Value {
    if let Some(object) = health.as_object_mut() {
        object.remove("uptime_s");
        object.remove("bus");
    }
    health
}

/// Answer one request. Only a stopped client is an error; bad requests get error answers.
async fn answer(
    handle: &MqttHandle,
    data: &dyn BridgeData,
    request: &Inbound,
    dropped: &mut LogThrottle,
) -> Result<(), crate::MqttError> {
    let Some(cmd) = request.topic.rsplit('/').next().map(str::to_string) else {
        return Ok(());
    };
    if request.retained {
        // A retained request would be answered again at every reconnect.
        dropped.warn("retained bridge request", Instant::now(), || {
            warn!(%cmd, "retained bridge request ignored");
        });
        return Ok(());
    }
    let response = respond(data, &cmd, &request.payload);
    debug!(%cmd, status = %response["status"], "bridge request answered");
    handle
        .publish(
            handle.topic(&format!("bridge/response/{cmd}")),
            response.to_string(),
        )
        .await
}

/// The response document for `cmd` with `payload`.
fn respond(data: &dyn BridgeData, cmd: &str, payload: &[u8]) -> Value {
    if payload.len() > MAX_REQUEST_BYTES {
        return reply(
            Err(format!("request of {} bytes is too large", payload.len())),
            Value::Null,
        );
    }
    let params: Value = if payload.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(payload) {
            Ok(value @ Value::Object(_)) => value,
            Ok(_) => return reply(Err("request must be a JSON object".into()), Value::Null),
            Err(_) => return reply(Err("request is not JSON".into()), Value::Null),
        }
    };
    let transaction = params.get("transaction").cloned().unwrap_or(Value::Null);
    let result = match cmd {
        "devices" => Ok(data.devices()),
        "health" => Ok(data.health()),
        "info" => Ok(data.info()),
        "resource" => match params.get("id").and_then(Value::as_str) {
            Some(id) => data
                .resource(id)
                .ok_or_else(|| format!("unknown resource {id:?}")),
            None => Err("resource needs {\"id\": \"<resource or device id>\"}".into()),
        },
        other => Err(format!(
            "unknown request {other:?} (devices, health, info, resource)"
        )),
    };
    reply(result, transaction)
}

fn reply(result: Result<Value, String>, transaction: Value) -> Value {
    let mut body = match result {
        Ok(data) => json!({ "data": data, "status": "ok", "error": null }),
        Err(error) => json!({ "data": {}, "status": "error", "error": error }),
    };
    if !transaction.is_null() {
        body["transaction"] = transaction;
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Data;
    impl BridgeData for Data {
        fn info(&self) -> Value {
            json!({"version": "x"})
        }
        fn devices(&self) -> Value {
            json!([{"id": "pv"}])
        }
        fn health(&self) -> Value {
            json!({"healthy": true})
        }
        fn resource(&self, id: &str) -> Option<Value> {
            (id == "pv").then(|| json!({"id": "pv"}))
        }
    }

    #[test]
    fn requests() {
        let r = respond(&Data, "devices", br#"{"transaction":"t1"}"#);
        assert_eq!(r["status"], "ok");
        assert_eq!(r["transaction"], "t1");
        assert_eq!(r["data"][0]["id"], "pv");
        let r = respond(&Data, "resource", br#"{"id":"nope","transaction":7}"#);
        assert_eq!(r["status"], "error");
        assert_eq!(r["transaction"], 7);
        assert_eq!(respond(&Data, "health", b"")["status"], "ok");
        assert_eq!(
            respond(&Data, "health", b"not json")["error"],
            "request is not JSON"
        );
        assert_eq!(respond(&Data, "health", b"[1]")["status"], "error");
        assert_eq!(respond(&Data, "bogus", b"{}")["status"], "error");
        assert_eq!(
            respond(&Data, "health", &vec![b' '; MAX_REQUEST_BYTES + 1])["status"],
            "error"
        );
    }
}
