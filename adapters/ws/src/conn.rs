//! One S2 session over one WebSocket: the loop every connection runs, whichever end
//! dialled and whichever side of the resource it plays.
//!
//! Keeping it in one place is what makes the edge rule hold everywhere: every inbound
//! text frame is judged by the connection's [`Edge`], every refusal is answered on the
//! socket and shown to the taps, and every outbound frame is shown to the edge first.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use s2gw_core::s2::{Id, ReceptionStatusValues, Timestamp};
use s2gw_core::{
    Admission, BusEvent, CancellationToken, Edge, Endpoint, Frame, Rejection, SessionFrames,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// The tungstenite configuration for a frame limit: a hard cap of four times the limit.
///
/// Frames between the limit and the cap are read and refused with INVALID_DATA by the
/// edge, so a peer that sends one too many bytes is told so and the session goes on;
/// beyond the cap the library stops buffering and the connection is closed (1009), so a
/// peer can never make the gateway hold more than the cap.
pub(crate) fn ws_config(limit: usize) -> WebSocketConfig {
    let cap = hard_cap(limit);
    WebSocketConfig::default()
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

/// What the loop needs besides the socket.
pub(crate) struct Session<'a> {
    /// The edge of this connection (one per S2 session).
    pub edge: &'a mut Edge,
    /// The adapter's endpoint on the bus.
    pub endpoint: &'a mut Endpoint,
    /// Keep-alive settings.
    pub timers: Timers,
    /// The daemon's shutdown.
    pub shutdown: &'a CancellationToken,
    /// For logs: which resource and which role.
    pub label: &'a str,
    /// Where the peer is a CEM: the RM side's frames, sorted into sessions, so a closed
    /// connection's frames never reach the next one. `None` where the peer is the RM.
    pub rm_frames: Option<&'a mut SessionFrames>,
}

/// Send the RM side's frames that waited for this connection, each shown to the edge
/// first.
pub(crate) async fn flush_waiting<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session<'_>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let waiting = session
        .rm_frames
        .as_deref_mut()
        .map(SessionFrames::connected)
        .unwrap_or_default();
    for frame in &waiting {
        send_frame(ws, session, frame).await?;
    }
    Ok(())
}

/// Run one connection until it ends. The socket is closed (or lost) on return.
pub(crate) async fn run<S>(ws: &mut WebSocketStream<S>, mut session: Session<'_>) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut exchanged = false;
    let ended = run_inner(ws, &mut session, &mut exchanged).await;
    Outcome { ended, exchanged }
}

async fn run_inner<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session<'_>,
    exchanged: &mut bool,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Timers {
        ping_interval,
        dead_after,
    } = session.timers;
    let label = session.label.to_string();
    // A zero interval would make `interval_at` panic; a millisecond is as good as zero.
    let ping_interval = ping_interval.max(Duration::from_millis(1));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    // A late ping must not be followed by a burst of catch-up pings.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();

    loop {
        let dead_at = last_seen + dead_after;
        tokio::select! {
            biased;
            () = session.shutdown.cancelled() => {
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
                        match inbound(ws, session, text.as_str()).await {
                            Ok(true) => *exchanged = true,
                            Ok(false) => {}
                            Err(end) => return end,
                        }
                    }
                    WsMessage::Binary(bytes) => {
                        // S2-ws-json is text only: answer as for any unreadable frame.
                        let rejection = Rejection {
                            kind: None,
                            status: ReceptionStatusValues::InvalidData,
                            subject: Id::NIL,
                            diagnostic: format!(
                                "binary frame of {} bytes: S2 JSON travels in text frames",
                                bytes.len()
                            ),
                        };
                        if let Err(end) = refuse(ws, session, rejection).await {
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
            event = session.endpoint.rx.recv() => match event {
                None => {
                    close(ws, CloseCode::Away, "gateway stopping").await;
                    return Ended::BusGone;
                }
                Some(BusEvent::Frame(frame)) => {
                    let frame = match session.rm_frames.as_deref_mut() {
                        None => frame,
                        Some(book) => match book.admit(frame) {
                            Admission::Send(frame) => frame,
                            _ => {
                                debug!(%label, "dropping a frame of an ended session");
                                continue;
                            }
                        },
                    };
                    if let Err(reason) = send_frame(ws, session, &frame).await {
                        return Ended::Lost(reason);
                    }
                }
                Some(BusEvent::Close { reconnect, reason }) => {
                    info!(%label, reconnect, %reason, "closing the session's transport");
                    close(ws, CloseCode::Normal, &reason).await;
                    return Ended::CloseRequested { reconnect };
                }
                Some(BusEvent::Down { reason }) => {
                    info!(%label, %reason, "the other side went down: closing");
                    close(ws, CloseCode::Normal, "the other side of the session is gone").await;
                    return Ended::OtherSideDown;
                }
                // Already connected; a repeated Up changes nothing. Rejections are for taps.
                Some(BusEvent::Up | BusEvent::Rejected(_)) => {}
            },
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
        }
    }
}

/// Judge one inbound text frame. `Ok(true)` when it passed to the bus.
async fn inbound<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session<'_>,
    text: &str,
) -> Result<bool, Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match session.edge.inbound(text, Timestamp::now()) {
        Ok(frame) => {
            debug!(label = %session.label, kind = ?frame.kind(), "received");
            for quirk in session.edge.take_quirks() {
                info!(label = %session.label, %quirk, "tolerated (said once per session)");
            }
            to_bus(ws, session, BusEvent::Frame(frame)).await?;
            Ok(true)
        }
        Err(rejection) => refuse(ws, session, rejection).await.map(|()| false),
    }
}

/// Answer a refused frame on the socket and show the refusal to the taps. The session
/// stays up: one bad frame is the peer's problem, not the connection's.
async fn refuse<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session<'_>,
    rejection: Rejection,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    warn!(
        label = %session.label,
        kind = ?rejection.kind,
        status = ?rejection.status,
        diagnostic = %rejection.diagnostic,
        "refused an inbound frame"
    );
    if let Some(reply) = rejection.reply() {
        send_frame(ws, session, &reply).await.map_err(Ended::Lost)?;
    }
    to_bus(ws, session, BusEvent::Rejected(rejection)).await
}

/// Hand an event to the bus. A full bus holds the connection back (backpressure), but
/// never past shutdown.
async fn to_bus<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session<'_>,
    event: BusEvent,
) -> Result<(), Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        sent = session.endpoint.tx.send(event) => sent.map_err(|_| Ended::BusGone),
        () = session.shutdown.cancelled() => {
            close(ws, CloseCode::Away, "gateway shutting down").await;
            Err(Ended::Shutdown)
        }
    }
}

/// Send one frame, shown to the edge first. A send that cannot complete within
/// `dead_after` means the peer stopped reading: treated as a dead peer.
async fn send_frame<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session<'_>,
    frame: &Frame,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    session.edge.outbound(frame, Timestamp::now());
    debug!(label = %session.label, kind = ?frame.kind(), "sending");
    let message = WsMessage::text(frame.text());
    match tokio::time::timeout(session.timers.dead_after, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("send failed: {error}")),
        Err(_) => Err("send blocked: the peer stopped reading".to_string()),
    }
}

/// The close code for "going away", for callers outside this module.
pub(crate) fn away() -> CloseCode {
    CloseCode::Away
}

/// Tell the bus a connection ended. At shutdown the bus may no longer be draining its
/// channels, so the `Down` is then only offered, never waited for.
pub(crate) async fn announce_down(endpoint: &Endpoint, outcome: &Outcome) {
    let event = BusEvent::Down {
        reason: outcome.down_reason(),
    };
    if matches!(outcome.ended, Ended::Shutdown) {
        let _ = endpoint.tx.try_send(event);
    } else {
        let _ = endpoint.tx.send(event).await;
    }
}

/// Send a close frame and give the peer a moment to answer it.
pub(crate) async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str)
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
