//! What every s2gw adapter shares.
//!
//! The daemon (`s2gw`) wires adapters together through the types in this crate and
//! nothing else: a device adapter implements [`device::Device`], an S2 transport speaks
//! [`bus::BusEvent`]s over an [`bus::Endpoint`], and both meet in the bus. Adapters never
//! depend on one another.
//!
//! [`s2`] is the project's one door to `s2-kit`: the data model, the edge check that
//! every inbound frame passes, and the protocol versions the gateway offers. This crate is
//! the only one with s2-kit as a normal dependency; the others have it as a
//! dev-dependency, for the tests' use of s2-kit's `testing` oracles and peers.

#![deny(missing_docs)]

pub mod backoff;
pub mod bus;
pub mod clock;
pub mod device;
pub mod hex;
pub mod link;
pub mod problems;
pub mod s2;
pub mod secret;
pub mod throttle;

pub use backoff::Backoff;
pub use bus::{BusEvent, Endpoint, EndpointPeer, Rejection, Side};
pub use clock::{Clock, SystemClock, TokioClock};
pub use device::{Command, Device, DeviceError, DeviceStatus, Readings};
pub use link::{
    Admission, FrameRate, FromBus, LinkSession, LinkState, Now, Refusal, SessionFrames, Verdict,
};
pub use problems::Problems;
pub use s2::{Edge, Frame, Quirk};
pub use secret::Secret;
pub use throttle::LogThrottle;

/// Cancellation shared by every task: cancelled once, on SIGTERM/SIGINT, after which
/// every task runs its fail-safe and stops.
pub use tokio_util::sync::CancellationToken;
