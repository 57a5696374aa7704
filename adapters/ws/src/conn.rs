//! One S2 session over one WebSocket: the loop every connection runs, whichever end
//! dialled and whichever side of the resource it plays.
//!
//! What to do with every inbound text and every bus event is decided by the link core
//! ([`LinkState`]): the edge, refusals, the RM side's frames, the `Up`/`Down` pairing.
//! This loop moves frames between the socket and the bus and owns what is WebSocket's
//! alone: pings and dead peers, close frames, binary frames and the hard size cap.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use s2gw_core::{
    BusEvent, CancellationToken, Endpoint, Frame, FromBus, LinkState, Now, Refusal, Rejection,
    Verdict,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::Error as WsProtoError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, info, warn};

/// How long a close handshake may take before the socket is simply dropped: a peer that
/// never answers must not hold a task.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The most a misbehaving peer can make us read and discard after an over-cap frame.
const DRAIN_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// Bytes a connection reads into at a time, and so the read buffer it keeps.
///
/// tungstenite's default (128 KiB) is allocated up front for every connection and its
/// pages are touched as reads sweep through it: with a session per device that was most
/// of a device's memory. What a CEM sends (instructions, ReceptionStatus) is far below
/// 4 KiB; a larger message grows the buffer to hold it (and the buffer keeps that size),
/// so this sets the floor of a connection's read buffer, never the message size.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The tungstenite configuration for a frame limit: a hard cap of four times the limit.
///
/// Frames between the limit and the cap are read and refused with INVALID_DATA by the
/// edge, so a peer that sends one too many bytes is told so and the session goes on;
/// beyond the cap the library stops buffering and the connection is closed (1009), so a
/// peer can never make the gateway hold more than the cap.
pub(crate) fn ws_config(limit: usize) -> WebSocketConfig {
    let cap = hard_cap(limit);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap))
}

/// Four times the configured limit.
pub(crate) fn hard_cap(limit: usize) -> usize {
    limit.saturating_mul(4)
}

/// Keep-alive settings of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    /// How often to ping.
    pub ping_interval: Duration,
    /// Silence (no frame, no pong) after which the peer counts as dead.
    pub dead_after: Duration,
}

/// Why a session's connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The bus asked to close (`BusEvent::Close`); the close frame was sent.
    CloseRequested {
        /// Come back at once (RECONNECT) or not (TERMINATE).
        reconnect: bool,
    },
    /// The other side of the resource went down; the close frame was sent.
    OtherSideDown,
    /// The gateway is shutting down; a 1001 close frame was sent.
    Shutdown,
    /// The bus dropped this endpoint: nothing is listening any more.
    BusGone,
    /// The connection itself ended: peer closed, transport error, dead peer, frame over
    /// the hard cap.
    Lost(String),
}

/// How a connection ended, and whether it did anything useful first.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Why it ended.
    pub ended: Ended,
    /// At least one frame from the peer passed the edge: a completed exchange, which is
    /// what resets a dialler's back-off.
    pub exchanged: bool,
}

impl Outcome {
    /// The reason to give the bus in the `Down` that follows.
    pub fn down_reason(&self) -> String {
        match &self.ended {
            Ended::CloseRequested { reconnect: true } => "closed for a reconnect".to_string(),
            Ended::CloseRequested { reconnect: false } => "session terminated".to_string(),
            Ended::OtherSideDown => "the other side went down".to_string(),
            Ended::Shutdown => "gateway shutting down".to_string(),
            Ended::BusGone => "bus gone".to_string(),
            Ended::Lost(reason) => reason.clone(),
        }
    }
}

/// What a connection needs besides the socket.
pub(crate) struct Link<'a> {
    /// The link core of this slot or dialler: pairing, the RM side's frames, the session.
    pub state: &'a mut LinkState,
    /// The adapter's endpoint on the bus.
    pub endpoint: &'a mut Endpoint,
    /// Keep-alive settings.
    pub timers: Timers,
    /// The daemon's shutdown.
    pub shutdown: &'a CancellationToken,
}

/// Run one connection from its `Up` to its `Down`: announce it, send what waited for it,
/// run it until it ends, drop the socket, and pair the `Up` with its `Down` (unless the
/// bus is gone, when nobody listens).
pub(crate) async fn serve<S>(mut ws: WebSocketStream<S>, mut link: Link<'_>) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let opened = link.state.open();
    if link.endpoint.tx.send(opened.up).await.is_err() {
        close(&mut ws, CloseCode::Away, "gateway stopping").await;
        let _ = link.state.close("bus gone");
        return Outcome {
            ended: Ended::BusGone,
            exchanged: false,
        };
    }
    let mut exchanged = false;
    let mut sent = Ok(());
    for frame in &opened.waiting {
        sent = send_frame(&mut ws, &mut link, frame).await;
        if sent.is_err() {
            break;
        }
    }
    let ended = match sent {
        Ok(()) => run_inner(&mut ws, &mut link, &mut exchanged).await,
        Err(reason) => Ended::Lost(reason),
    };
    drop(ws);
    let outcome = Outcome { ended, exchanged };
    let down = link.state.close(outcome.down_reason());
    match (&outcome.ended, down) {
        (Ended::BusGone, _) | (_, None) => {}
        // At shutdown the bus may no longer be draining its channels: the `Down` is only
        // offered, never waited for.
        (Ended::Shutdown, Some(down)) => {
            let _ = link.endpoint.tx.try_send(down);
        }
        (_, Some(down)) => {
            let _ = link.endpoint.tx.send(down).await;
        }
    }
    outcome
}

async fn run_inner<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut Link<'_>,
    exchanged: &mut bool,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Timers {
        ping_interval,
        dead_after,
    } = link.timers;
    let label = link.state.label().to_string();
    // A zero interval would make `interval_at` panic; a millisecond is as good as zero.
    let ping_interval = ping_interval.max(Duration::from_millis(1));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    // A late ping must not be followed by a burst of catch-up pings.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();

    loop {
        let dead_at = last_seen + dead_after;
        let summary_due = link.state.summary_due().map(Instant::from_std);
        tokio::select! {
            biased;
            () = link.shutdown.cancelled() => {
                close(ws, CloseCode::Away, "gateway shutting down").await;
                return Ended::Shutdown;
            }
            () = tokio::time::sleep_until(dead_at) => {
                warn!(%label, ?dead_after, "no frame or pong from the peer: dead peer");
                // A dead peer will not answer the close frame: send it and go.
                let frame = CloseFrame { code: CloseCode::Away, reason: "no pong".into() };
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
                return Ended::Lost(format!("dead peer: nothing received for {dead_after:?}"));
            }
            incoming = ws.next() => {
                let message = match incoming {
                    None => return Ended::Lost("connection closed".to_string()),
                    Some(Err(WsProtoError::Capacity(error))) => {
                        warn!(%label, %error, "frame over the hard cap: closing with 1009");
                        close_over_cap(ws).await;
                        return Ended::Lost(format!("frame over the hard cap ({error})"));
                    }
                    Some(Err(WsProtoError::ConnectionClosed | WsProtoError::AlreadyClosed)) => {
                        return Ended::Lost("connection closed".to_string());
                    }
                    Some(Err(error)) => return Ended::Lost(format!("transport error: {error}")),
                    Some(Ok(message)) => message,
                };
                last_seen = Instant::now();
                match message {
                    WsMessage::Text(text) => {
                        let step = match link.state.inbound(text.as_str(), Now::read()) {
                            Verdict::Deliver(frame) => {
                                *exchanged = true;
                                to_bus(ws, link, BusEvent::Frame(frame)).await
                            }
                            Verdict::Refuse(refusal) => answer(ws, link, refusal).await,
                        };
                        if let Err(end) = step {
                            return end;
                        }
                    }
                    WsMessage::Binary(bytes) => {
                        // S2-ws-json is text only: answer as for any unreadable frame.
                        let rejection = Rejection::unreadable(format!(
                            "binary frame of {} bytes: S2 JSON travels in text frames",
                            bytes.len()
                        ));
                        let refusal = link.state.refuse(rejection, Now::read());
                        if let Err(end) = answer(ws, link, refusal).await {
                            return end;
                        }
                    }
                    WsMessage::Close(frame) => {
                        // tungstenite has queued the answering close frame; flushing it
                        // completes the close handshake the peer started.
                        let why = frame.map_or_else(
                            || "no code".to_string(),
                            |f| format!("{} {}", u16::from(f.code), f.reason),
                        );
                        info!(%label, %why, "the peer closed the connection");
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                        return Ended::Lost(format!("closed by the peer ({why})"));
                    }
                    // Pongs and pings only prove liveness; tungstenite answers pings.
                    WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                }
            }
            event = link.endpoint.rx.recv() => {
                if let Some(end) = from_bus(ws, link, event).await {
                    return end;
                }
            }
            _ = ping.tick() => {
                let sent = tokio::time::timeout(
                    dead_after,
                    ws.send(WsMessage::Ping(Default::default())),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Ended::Lost(format!("ping failed: {error}")),
                    Err(_) => return Ended::Lost("ping could not be sent: dead peer".to_string()),
                }
            }
            () = sleep_until(summary_due), if summary_due.is_some() => {
                link.state.tick(std::time::Instant::now());
            }
        }
    }
}

/// Answer a refused frame on the socket and show the refusal to the taps. The session
/// stays up: one bad frame is the peer's problem, not the connection's.
async fn answer<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut Link<'_>,
    refusal: Refusal,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(reply) = &refusal.reply {
        send_frame(ws, link, reply).await.map_err(Ended::Lost)?;
    }
    to_bus(ws, link, refusal.tap).await
}

/// What the bus has for this connection (`None`: the bus is gone): a frame goes out on
/// the socket, a close or the other side's end ends the connection (returned).
async fn from_bus<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut Link<'_>,
    event: Option<BusEvent>,
) -> Option<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(event) = event else {
        close(ws, CloseCode::Away, "gateway stopping").await;
        return Some(Ended::BusGone);
    };
    let label = link.state.label().to_string();
    match link.state.from_bus(event) {
        FromBus::Send(frame) => send_frame(ws, link, &frame).await.err().map(Ended::Lost),
        FromBus::Close { reconnect, reason } => {
            info!(%label, reconnect, %reason, "closing the session's transport");
            close(ws, CloseCode::Normal, &reason).await;
            Some(Ended::CloseRequested { reconnect })
        }
        FromBus::OtherSideDown { reason } => {
            info!(%label, %reason, "the other side went down: closing");
            close(
                ws,
                CloseCode::Normal,
                "the other side of the session is gone",
            )
            .await;
            Some(Ended::OtherSideDown)
        }
        // Already connected, so an Up changes nothing here; what waits, was dropped or
        // is for the taps needs nothing either.
        FromBus::OtherSideUp | FromBus::Nothing => None,
    }
}

/// Hand an event to the bus. A full bus holds the connection's reading back
/// (backpressure), but never past shutdown, and never its writing: while it waits, what
/// the bus has for this socket still goes out. Each direction of a route is bounded, and
/// the other side of the session may itself be waiting for this side to drain its
/// direction; two sides that both only waited would stall each other for good (a proxied
/// RM and its CEM, both sending at full speed, did).
async fn to_bus<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut Link<'_>,
    event: BusEvent,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let event = match link.endpoint.tx.try_send(event) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(Ended::BusGone),
        Err(mpsc::error::TrySendError::Full(event)) => event,
    };
    // A sender of its own, so waiting on it leaves the link free for the socket.
    let tx = link.endpoint.tx.clone();
    loop {
        tokio::select! {
            permit = tx.reserve() => {
                let permit = permit.map_err(|_| Ended::BusGone)?;
                permit.send(event);
                return Ok(());
            }
            outbound = link.endpoint.rx.recv() => {
                if let Some(end) = from_bus(ws, link, outbound).await {
                    return Err(end);
                }
            }
            () = link.shutdown.cancelled() => {
                close(ws, CloseCode::Away, "gateway shutting down").await;
                return Err(Ended::Shutdown);
            }
        }
    }
}

/// Send one frame, shown to the edge first. A send that cannot complete within
/// `dead_after` means the peer stopped reading: treated as a dead peer.
async fn send_frame<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut Link<'_>,
    frame: &Frame,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    link.state.outbound(frame, Now::read());
    debug!(label = %link.state.label(), kind = ?frame.kind(), "sending");
    let message = WsMessage::text(frame.text());
    match tokio::time::timeout(link.timers.dead_after, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("send failed: {error}")),
        Err(_) => Err("send blocked: the peer stopped reading".to_string()),
    }
}

/// Sleep until `deadline`; never wakes without one (its `select!` branch is then off).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Send a close frame and give the peer a moment to answer it.
async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: truncate_reason(reason).into(),
    };
    let handshake = async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Wait for the peer's close frame (or the end of the stream), discarding
        // anything still in flight, so the peer sees an orderly close.
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, handshake).await;
}

/// Close after a frame over the hard cap.
///
/// tungstenite must not read again: it still holds the oversized frame's header and would
/// buffer the whole frame. So the close frame (1009, message too big) is sent, the write
/// side shut, and whatever the peer still sends is read raw and thrown away, bounded in
/// time and bytes, so that the kernel does not answer unread data with a reset that could
/// swallow the close frame on the peer's side.
async fn close_over_cap<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Size,
        reason: "frame exceeds the hard size limit".into(),
    };
    let drain = async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        let raw = ws.get_mut();
        let _ = raw.shutdown().await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while total < DRAIN_BUDGET_BYTES {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total = total.saturating_add(n),
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// Close reasons are limited to 123 bytes by RFC 6455.
fn truncate_reason(reason: &str) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason.to_string();
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_the_rfc_limit() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn the_hard_cap_is_four_times_the_limit() {
        let config = ws_config(1000);
        assert_eq!(config.max_message_size, Some(4000));
        assert_eq!(config.max_frame_size, Some(4000));
        assert_eq!(hard_cap(usize::MAX), usize::MAX);
    }
}
