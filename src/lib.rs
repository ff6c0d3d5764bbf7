//! Our Memories server: the warp front end over the actors of `our-memories-actors`.
//!
//! # Layout
//! - [`config`]: environment variables, validated at start; [`healthcheck`]: the container
//!   probe (`our-memories healthcheck`).
//! - [`app`]: builds everything and runs until shutdown; [`serve`] is the accept loop,
//!   [`shutdown`] the signal and the bounded drain.
//! - [`http`]: REST routes (pairing, signals, health), bearer auth, the one error mapping.
//! - [`ws`]: the WebSocket route, wire protocol and per-socket session.
//! - [`store`]: the MongoDB (+ GridFS) and S3 adapters, and the backend selection.
//! - [`state`]: what handlers share; [`secret`]: the token-signing key; [`telemetry`]: logs;
//!   [`metrics`]: the Prometheus registry behind `GET /metrics`.
//!
//! The domain (rooms, mailboxes, pairing, storage) lives in the `actors` crate and knows
//! nothing of HTTP.

pub mod app;
pub mod config;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod ws;
