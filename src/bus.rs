//! The bus: one route per resource between its RM side and its CEM side, with taps.
//!
//! A route is two forwarders, one per direction, so a slow side never holds up the other
//! direction. Adapters already checked every frame at their edge (see
//! [`s2gw_core::Edge`]); the bus forwards what passed and shows everything, refusals
//! included, to the taps. Taps observe and cannot alter: they get a shared reference.

use std::sync::Arc;

use s2gw_core::{BusEvent, Endpoint, EndpointPeer, Side};
use tokio::sync::mpsc;

pub mod taps;

/// Room for this many events per direction before a sender waits.
///
/// S2 traffic is a few messages a second per resource; the room is for bursts (a large
/// description plus its acknowledgements) and for a side that is briefly busy.
pub const ROUTE_CAPACITY: usize = 1024;

/// Something that watches the bus.
///
/// Called synchronously on the forwarding path: keep it cheap and never block (hand work
/// to a task through a channel, as [`taps::TrafficLog`] does).
pub trait Tap: Send + Sync {
    /// One event, coming from `from`, on the route of `resource_id`.
    fn observe(&self, resource_id: &str, from: Side, event: &BusEvent);
}

/// The bus: creates routes and owns the taps they report to.
#[derive(Clone, Default)]
pub struct Bus {
    taps: Vec<Arc<dyn Tap>>,
}

impl Bus {
    /// A bus with no taps.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a tap; it sees every route created afterwards.
    pub fn add_tap(&mut self, tap: Arc<dyn Tap>) {
        self.taps.push(tap);
    }

    /// Create the route of one resource and return the endpoints for its two sides:
    /// `(rm, cem)`. The route runs until both sides have dropped their endpoints.
    pub fn route(&self, resource_id: &str) -> (Endpoint, Endpoint) {
        let (rm, rm_peer) = Endpoint::pair(ROUTE_CAPACITY);
        let (cem, cem_peer) = Endpoint::pair(ROUTE_CAPACITY);
        let EndpointPeer {
            rx: from_rm,
            tx: to_rm,
        } = rm_peer;
        let EndpointPeer {
            rx: from_cem,
            tx: to_cem,
        } = cem_peer;
        let resource: Arc<str> = resource_id.into();
        tokio::spawn(forward(
            resource.clone(),
            Side::Rm,
            from_rm,
            to_cem,
            self.taps.clone(),
        ));
        tokio::spawn(forward(
            resource,
            Side::Cem,
            from_cem,
            to_rm,
            self.taps.clone(),
        ));
        (rm, cem)
    }
}

/// Carry events from one side to the other, showing each to the taps first.
async fn forward(
    resource: Arc<str>,
    from: Side,
    mut rx: mpsc::Receiver<BusEvent>,
    tx: mpsc::Sender<BusEvent>,
    taps: Vec<Arc<dyn Tap>>,
) {
    while let Some(event) = rx.recv().await {
        for tap in &taps {
            tap.observe(&resource, from, &event);
        }
        // A refusal was answered at the edge it came in by; it is news, not traffic.
        if matches!(event, BusEvent::Rejected(_)) {
            continue;
        }
        if tx.send(event).await.is_err() {
            tracing::debug!(%resource, ?from, "the other side of the route is gone");
            break;
        }
    }
    // The sending side ended (its task stopped): to the other side that is a side gone.
    let gone = BusEvent::Down {
        reason: format!("{from:?} side stopped"),
    };
    for tap in &taps {
        tap.observe(&resource, from, &gone);
    }
    let _ = tx.send(gone).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::s2::{
        EnergyManagementRole, Frame, Id, Message, ReceptionStatusValues, Rejection,
    };
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Side, String)>>);

    impl Tap for Recorder {
        fn observe(&self, _: &str, from: Side, event: &BusEvent) {
            let name = match event {
                BusEvent::Up => "up".to_string(),
                BusEvent::Frame(f) => f.kind().as_str().to_string(),
                BusEvent::Down { .. } => "down".to_string(),
                BusEvent::Close { .. } => "close".to_string(),
                BusEvent::Rejected(_) => "rejected".to_string(),
            };
            if let Ok(mut seen) = self.0.lock() {
                seen.push((from, name));
            }
        }
    }

    fn handshake() -> Frame {
        Frame::new(Message::Handshake(s2gw_core::s2::Handshake {
            message_id: s2gw_core::s2::mint_id(),
            role: EnergyManagementRole::Rm,
            supported_protocol_versions: Some(s2gw_core::s2::offered_versions()),
        }))
    }

    #[tokio::test]
    async fn frames_cross_and_rejections_stop_at_the_bus() {
        let recorder = Arc::new(Recorder::default());
        let mut bus = Bus::new();
        bus.add_tap(recorder.clone());
        let (rm, mut cem) = bus.route("r1");

        rm.tx.send(BusEvent::Up).await.unwrap();
        rm.tx
            .send(BusEvent::Rejected(Box::new(Rejection {
                kind: None,
                status: ReceptionStatusValues::InvalidData,
                subject: Id::NIL,
                diagnostic: "not JSON".into(),
            })))
            .await
            .unwrap();
        rm.tx.send(BusEvent::Frame(handshake())).await.unwrap();

        assert!(matches!(cem.rx.recv().await, Some(BusEvent::Up)));
        match cem.rx.recv().await {
            Some(BusEvent::Frame(f)) => assert_eq!(f.kind().as_str(), "Handshake"),
            other => panic!("expected the handshake, got {other:?}"),
        }
        let seen = recorder.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (Side::Rm, "up".to_string()),
                (Side::Rm, "rejected".to_string()),
                (Side::Rm, "Handshake".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn a_side_that_stops_is_reported_down_to_the_other() {
        let bus = Bus::new();
        let (rm, mut cem) = bus.route("r2");
        drop(rm);
        assert!(matches!(cem.rx.recv().await, Some(BusEvent::Down { .. })));
    }
}
