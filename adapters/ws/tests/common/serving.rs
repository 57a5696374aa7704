//! A running server with a native RM slot and a CEM slot, and raw peers dialling it.

use s2gw_core::{CancellationToken, Endpoint, EndpointPeer};
use s2gw_ws::{Server, ServerConfig};
use tokio_tungstenite::tungstenite::Error as WsProtoError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{guard, trace};

pub struct Running {
    pub url: String,
    pub rm: EndpointPeer,
    pub cem: EndpointPeer,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

/// A server with a native RM slot and a CEM slot for resource `r1`.
pub async fn serve(config: ServerConfig) -> Running {
    trace();
    let mut server = Server::bind(config).await.unwrap();
    let (rm_endpoint, rm) = Endpoint::pair(64);
    let (cem_endpoint, cem) = Endpoint::pair(64);
    server.add_native_rm("r1".to_string(), rm_endpoint);
    server.add_cem_slot("r1".to_string(), cem_endpoint);
    let url = format!("ws://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    let task = server.spawn(shutdown.clone());
    Running {
        url,
        rm,
        cem,
        shutdown,
        task,
    }
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        guard("the server to stop", self.task).await.unwrap();
    }
}

/// A server whose only slot is native RM `id`, with room for one event each way on its
/// bus endpoint, so a test decides when the slot's sends to the bus complete.
pub struct NarrowSlot {
    pub url: String,
    pub bus: EndpointPeer,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn serve_narrow_native_rm(id: &str) -> NarrowSlot {
    trace();
    let mut server = Server::bind(ServerConfig::default()).await.unwrap();
    let (endpoint, bus) = Endpoint::pair(1);
    server.add_native_rm(id.to_string(), endpoint);
    let url = format!("ws://{}/s2/rm/{id}", server.local_addr());
    let shutdown = CancellationToken::new();
    let task = server.spawn(shutdown.clone());
    NarrowSlot {
        url,
        bus,
        shutdown,
        task,
    }
}

pub fn status_of(error: WsProtoError) -> u16 {
    match error {
        WsProtoError::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

pub async fn dial(url: &str) -> Result<Raw, WsProtoError> {
    dial_with(url, None).await
}

pub type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn dial_with(url: &str, auth: Option<&str>) -> Result<Raw, WsProtoError> {
    let mut request = url.into_client_request().unwrap();
    if let Some(auth) = auth {
        request
            .headers_mut()
            .insert("Authorization", auth.parse().unwrap());
    }
    guard("a dial", tokio_tungstenite::connect_async(request))
        .await
        .map(|(ws, _)| ws)
}

/// A TCP connection to `addr` from the loopback address `source` (any of 127.0.0.0/8):
/// how a test plays several hosts.
pub async fn tcp_from(source: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let tcp = guard("a TCP connect", socket.connect(addr)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// [`dial_with`], from the loopback address `source`.
pub async fn dial_from(
    source: [u8; 4],
    url: &str,
    auth: Option<&str>,
) -> Result<Raw, WsProtoError> {
    let mut request = url.into_client_request().unwrap();
    if let Some(auth) = auth {
        request
            .headers_mut()
            .insert("Authorization", auth.parse().unwrap());
    }
    let uri = request.uri();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap())
        .parse()
        .unwrap();
    let tcp = tcp_from(source, addr).await;
    guard(
        "a dial",
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .map(|(ws, _)| ws)
}
