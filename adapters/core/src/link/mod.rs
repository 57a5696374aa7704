//! The link core: what every S2 transport (WebSocket client, WebSocket server, S2 over
//! MQTT, either side) does between its socket and the bus.
//!
//! ## The RM side's frames
//!
//! A CEM-side link (the WebSocket client, the WebSocket server's CEM slot, S2 over MQTT
//! towards a CEM) connects and disconnects while the RM side stays up. Each connection
//! carries one S2 session, and every session starts with the RM's Handshake. Frames
//! cross the bus asynchronously, so when a connection ends, frames the RM produced for
//! it may still be on their way; sent into the next connection they would put a second
//! Handshake, or a message before the Handshake, into that session.
//!
//! The bus contract that makes this decidable: **the RM side's n-th Handshake since it
//! came up opens the session of the link's n-th connection.** A virtual RM answers each
//! `Up` with a new session that starts with its Handshake; a native RM says its
//! Handshake once per connection of its own, and its session ends (Down, then Up again
//! when it comes back) whenever the CEM-side connection ends. [`SessionFrames`] counts
//! both and sorts every frame into *send now*, *wait for the next connection* or
//! *stale*.

mod frames;

pub use frames::{Admission, SessionFrames};
