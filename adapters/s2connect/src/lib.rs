//! S2 Connect 1.0 for s2gw: the RM side of pairing and session initiation.
//!
//! Every resource the gateway hosts is an S2 Connect node with role RM. This crate keeps
//! what must outlive the process in the state directory and drives s2-kit's connect
//! client (reached through [`s2gw_core::s2::connect`]) with it:
//!
//! - [`NodeStore`]: one node id per resource, minted once and kept (`<device>.node-id`);
//! - [`PairingFile`]: the pairings of one resource (`<device>.pairings.json`), written
//!   atomically with mode 0600; it holds access tokens, so nothing here prints one;
//! - [`pair`]: pairing with a CEM that runs the pairing server (`s2gw pair`);
//! - [`Initiator`]: a [`s2gw_ws::DialSource`] that runs `initiateSession` /
//!   `confirmAccessToken` before every dial and hands the client link the WebSocket URL
//!   and its single-use token;
//! - [`unpair`]: ends a pairing on both sides (`s2gw unpair`);
//! - [`start_pairing_server`]: the gateway's own pairing server, for a CEM that pairs
//!   with the gateway using a code from [`PairingCodes`] (`s2gw pairing-code`), over a
//!   TLS [`Identity`] kept in the state directory; the pairings it makes are the same
//!   files, used by the same [`Initiator`];
//! - [`spawn_long_poll`]: `waitForPairing` on a LAN CEM that starts pairing from its own
//!   UI, for the resources with a live pairing code;
//! - [`advertise`]: the pairing server on DNS-SD as `_s2connect._tcp` subtype `_rm`, and
//!   [`discover`]: the browse behind `s2gw discover`, with each endpoint's nodes.
//!
//! # Layout
//! `node.rs` node ids and descriptions; `store.rs` the pairing file; `pair.rs` and
//! `initiate.rs` the RM as pairing and session client; `trust.rs` the CEM certificate
//! after pairing; `codes.rs`, `identity.rs`, `events.rs`, `hosted.rs` (s2-kit's server store over the
//! state directory) and `server.rs` the RM as pairing server; `longpoll.rs` the RM as long-polling client; `discovery.rs` DNS-SD.
//!
//! The daemon and the commands meet only in the state directory: a pairing made or
//! removed while the daemon runs takes effect at its next session initiation.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod codes;
mod discovery;
mod events;
mod hosted;
mod identity;
mod initiate;
mod longpoll;
mod node;
mod pair;
mod server;
mod store;
mod trust;

pub use codes::{DEFAULT_CODE_VALIDITY, IssuedCode, PairingCodes, aliases};
pub use discovery::{
    AdvertiseSpec, Advertisement, BrowseSpec, DiscoveryError, FoundEndpoint, Interfaces, advertise,
    discover,
};
pub use events::PairedEvents;
pub use identity::{Identity, IdentitySource};
pub use initiate::Initiator;
pub use longpoll::{CODE_CHECK, LongPollConfig, PollingNode, spawn_long_poll};
pub use node::{NodeSpec, NodeStore};
pub use pair::{PairError, PairTarget, pair, unpair};
pub use server::{
    PairingServerConfig, RunningPairingServer, ServerError, SessionDoor, WanServing,
    start_pairing_server,
};
pub use store::{PairingFile, PairingSummary, StoreError, StoredPairing, StoredTls};
