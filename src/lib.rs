//! Our Memories server: the warp front end over the actors of `our-memories-actors`.
//!
//! # Layout
//! Layers point one way, bottom to top (a unit test in `layers.rs` checks it on the source):
//! - [`config`]: environment variables, validated at start, and the settings types; it names
//!   nothing above it. [`healthcheck`]: the container probe (`our-memories healthcheck`).
//!   [`memory`]: gives freed heap memory back to the OS.
//! - [`secret`] (the token-signing key), [`telemetry`] (logs), [`store`] (the MongoDB, GridFS
//!   and S3 adapters, and the backend selection), [`cluster`] (cluster mode's bus on Redis),
//!   [`metrics`] (the Prometheus registry; it
//!   takes outcome labels, not errors), [`shutdown`] (the signal and the bounded drain).
//! - [`front`]: what every transport shares: the error type and its status/code map, bearer
//!   auth, rate limits, browser rules, wire helpers, per-connection values.
//! - [`state`]: the handles and limits built once at start.
//! - The transports, side by side, never naming each other: [`http`] (REST routes), [`ws`]
//!   (the JSON WebSocket: wire protocol and per-socket session) and [`socketio`] (Socket.IO
//!   for the app's existing clients).
//! - [`routes`]: composes the transports; [`serve`]: the accept loop; [`app`]: builds
//!   everything and runs until shutdown.
//!
//! The domain (rooms, mailboxes, pairing, storage) lives in the `actors` crate and knows
//! nothing of HTTP.

pub mod app;
pub mod cluster;
pub mod config;
pub mod front;
pub mod healthcheck;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod routes;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod socketio;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod ws;

#[cfg(test)]
mod docs;
#[cfg(test)]
mod layers;
