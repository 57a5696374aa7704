//! `[[native]]`: resource managers that speak S2 themselves.

use s2gw_core::s2::Id;
use serde::Deserialize;

use super::load::{Cx, Refs};
use super::located::Text;

/// Where a native RM meets the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeTransport {
    /// `transport = "ws-server"` (default): it dials `[server]` at `/s2/rm/<id>`.
    WsServer,
    /// `transport = "mqtt"`: it lives on the `[mqtt]` broker, on
    /// `<base>/s2/<resource_id>/…`; the gateway plays the CEM side there.
    Mqtt,
}

/// `[[native]]`: an RM that speaks S2 itself and connects to `[server]` at `/s2/rm/<id>`,
/// or lives on MQTT.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeSection {
    /// `id`: unique among devices and natives, `[A-Za-z0-9_-]{1,48}`.
    pub id: String,
    /// `transport`: how it reaches the gateway.
    pub transport: NativeTransport,
    /// `resource_id`, or derived like a device's: what the gateway uses towards the CEM
    /// (the URL placeholder, `/s2/cem/<resource_id>`) before the RM introduces itself.
    pub resource_id: Id,
    /// `cem`: the link it is routed to.
    pub cem: String,
}

/// `[[native]]` as written. Fields in alphabetical order: serde lists them in declaration
/// order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeToml {
    cem: Option<Text>,
    id: Option<Text>,
    resource_id: Option<Text>,
    transport: Option<Text>,
}

impl Cx<'_> {
    /// Read the `[[native]]` entry at `path` (`native[0]`).
    pub(crate) fn native(
        &mut self,
        path: &str,
        table: &toml::Table,
        refs: &mut Refs<'_>,
    ) -> Option<NativeSection> {
        let mark = self.mark();
        let (raw, at) = self.read::<NativeToml>(table, path)?;
        let id = at
            .required(self.errors, "id", raw.id.map(|t| t.0))
            .and_then(|id| refs.claim_id(&at, self.errors, id));
        let text = raw
            .transport
            .map_or_else(|| "ws-server".to_string(), |t| t.0);
        let transport = match text.as_str() {
            "ws-server" => {
                if !refs.present.server {
                    self.err(
                        path,
                        "a native RM connects to the gateway's S2 server at /s2/rm/<id>, but \
                         there is no [server] section",
                    );
                }
                Some(NativeTransport::WsServer)
            }
            "mqtt" => {
                if !refs.present.mqtt {
                    at.err(
                        self.errors,
                        "transport",
                        "transport \"mqtt\" needs an [mqtt] section: the native RM meets the \
                         gateway on that broker",
                    );
                }
                Some(NativeTransport::Mqtt)
            }
            other => {
                at.err(
                    self.errors,
                    "transport",
                    format!("unknown transport `{other}` (expected \"ws-server\" or \"mqtt\")"),
                );
                None
            }
        };
        let rid = refs.resource_id(
            &at,
            self.errors,
            raw.resource_id.map(|t| t.0),
            id.as_deref(),
        );
        let cem = refs.cem(&at, self.errors, raw.cem.map(|t| t.0));
        if !self.clean_since(mark) {
            return None;
        }
        Some(NativeSection {
            id: id?,
            transport: transport?,
            resource_id: rid?,
            cem: cem?,
        })
    }
}
