//! The Our Memories domain, free of HTTP and of any database SDK.
//!
//! ```text
//!            RoomSupervisor ──spawn_linked──▶ RoomActor (one per couple)
//!                  ▲                            owns: sockets' bounded senders,
//!   Rooms handle ──┘                                  one ordered Mailbox per device
//!   Pairing handle ──▶ PairingActor              writes offline signals to the Store
//!   Backups handle ──▶ BackupActor (publish + retention); bytes stream to the BlobStore
//!                            │
//!                            ▼
//!        dyn Store (EmbeddedStore = redb in DATA_DIR)   dyn BlobStore (FileBlobs in DATA_DIR)
//! ```
//!
//! # Layout
//! - [`ids`], [`token`], [`clock`]: validated identifiers, secrets and time.
//! - [`mailbox`]: one device's ordered, bounded queue of signals.
//! - [`room`], [`supervisor`], [`pairing`], [`backup`]: the actors, each beside the typed
//!   handle the front end calls ([`Rooms`] and [`RoomLink`], [`Pairing`], [`Backups`]);
//!   [`keeper`] restarts the pairing and backup actors when they fail.
//! - `domain`: [`Domain`] starts the tree, shuts it down and runs the store janitor; `call`:
//!   how handles call actors, every wait bounded.
//! - [`store`]: the persistence traits, the [`Storage`] health handle, the embedded store and
//!   the file blob store.
#![warn(missing_docs, unreachable_pub)]

pub mod backup;
mod call;
pub mod clock;
mod domain;
pub mod error;
pub mod ids;
pub mod keeper;
pub mod mailbox;
pub mod metrics;
pub mod pairing;
pub mod room;
pub mod settings;
pub mod store;
pub mod supervisor;
pub mod token;

pub use backup::{Backups, UploadInfo};
pub use clock::{Clock, Timestamp};
pub use domain::Domain;
pub use error::{BackupError, PairingError, RoomError};
pub use ids::{BackupId, CoupleId, DeviceId, IdError, Seq, SignalId};
pub use mailbox::{MailboxLimits, Payload, Signal};
pub use metrics::DomainMetrics;
pub use pairing::Pairing;
/// Why the actor tree could not start.
pub use ractor::SpawnErr;
pub use room::{ConnId, Connection, Kick, RoomEvent};
pub use settings::Settings;
pub use store::{
    BackendStatus, BackupRecord, Blob, BlobStore, ByteStream, Storage, Store, StoreError,
};
pub use supervisor::{RoomGone, RoomLink, Rooms};
pub use token::{DeviceToken, PairingToken, SigningSecret, TokenError};
