//! What every transport shares: REST (`http`), the JSON WebSocket (`ws`) and, later, other
//! ways in sit side by side on this layer and never import each other.
//!
//! - [`error`]: the one error type, its HTTP status / wire code map and the JSON renderer.
//! - [`auth`]: bearer tokens and the access rule (a token opens only its couple and device).
//! - [`rate`]: per-IP and per-device rate limits (429 with `Retry-After`).
//! - [`browser`]: security headers, CORS and the `Origin` rule.
//! - [`wire`]: JSON bodies, timestamps and route naming for the metrics.
//! - [`conn`]: what the accept loop attaches to each request (peer address, upgrade slot).
//!
//! Layers point one way: `config` ← `metrics` ← `front` ← `state` ← (`http`, `ws`) ←
//! `routes` ← `serve` ← `app`.

pub mod auth;
pub mod browser;
pub mod conn;
pub mod error;
pub mod rate;
pub mod wire;
