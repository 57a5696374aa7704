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
//! - [`unpair`]: ends a pairing on both sides (`s2gw unpair`).
//!
//! The daemon and the commands meet only in the state directory: a pairing made or
//! removed while the daemon runs takes effect at its next session initiation.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod initiate;
mod node;
mod pair;
mod store;

pub use initiate::Initiator;
pub use node::{NodeSpec, NodeStore};
pub use pair::{PairError, PairTarget, pair, unpair};
pub use store::{PairingFile, PairingSummary, StoreError, StoredPairing, StoredTls};
