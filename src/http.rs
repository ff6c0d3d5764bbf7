//! The REST transport: one file per route family. Handlers only parse, check access and call
//! a typed actor handle; errors, auth, limits and JSON helpers come from [`crate::front`].

pub mod backup;
pub mod demo;
pub mod devices;
pub mod health;
pub mod ice;
pub mod metrics;
pub mod pairing;
pub mod signals;
pub mod tus;

/// Largest pairing body: two ids and a token, with generous room.
pub const PAIRING_BODY_LIMIT: u64 = 4 * 1024;
/// Largest `POST /api/signal` body: a 64 KiB payload plus its envelope.
pub const SIGNAL_BODY_LIMIT: u64 = 72 * 1024;
