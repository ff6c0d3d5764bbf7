//! The Our Memories domain, free of HTTP and of any database SDK.
//!
//! ```text
//!            RoomSupervisor ──spawn_linked──▶ RoomActor (one per couple)
//!                  ▲                            owns: sockets' bounded senders,
//!   Rooms handle ──┘                                  one ordered Mailbox per device
//!   Pairing handle ──▶ PairingActor              writes offline signals to the Store
//!                            │
//!                            ▼
//!                      dyn Store  (EmbeddedStore = redb file in DATA_DIR)
//! ```
//!
//! # Layout
//! - [`ids`], [`token`], [`clock`]: validated identifiers, secrets and time.
//! - [`mailbox`]: one device's ordered, bounded queue of signals.
//! - [`room`], [`supervisor`], [`pairing`]: the actors.
//! - [`handle`]: typed handles the front end calls ([`Domain`], [`Rooms`], [`Pairing`]).
//! - [`store`]: the persistence trait and the embedded store.
#![warn(missing_docs, unreachable_pub)]

pub mod clock;
pub mod error;
pub mod handle;
pub mod ids;
pub mod mailbox;
pub mod pairing;
pub mod room;
pub mod settings;
pub mod store;
pub mod supervisor;
pub mod token;

pub use clock::{Clock, Timestamp};
pub use error::{PairingError, RoomError};
pub use handle::{Domain, Pairing, RoomGone, RoomLink, Rooms};
pub use ids::{CoupleId, DeviceId, IdError, Seq, SignalId};
pub use mailbox::{MailboxLimits, Payload, Signal};
/// Why the actor tree could not start.
pub use ractor::SpawnErr;
pub use room::{ConnId, Connection, Kick, RoomEvent};
pub use settings::Settings;
pub use store::{Store, StoreError};
pub use token::{DeviceToken, PairingToken, SigningSecret, TokenError};
