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
//! - [`room`], [`supervisor`], [`pairing`], [`backup`]: the actors; [`keeper`] restarts the
//!   pairing and backup actors when they fail.
//! - [`handle`]: typed handles the front end calls ([`Domain`], [`Rooms`], [`Pairing`]).
//! - [`store`]: the persistence traits, the embedded store and the file blob store.
#![warn(missing_docs, unreachable_pub)]

pub mod backup;
pub mod clock;
pub mod error;
pub mod handle;
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

pub use clock::{Clock, Timestamp};
pub use error::{BackupError, PairingError, RoomError};
pub use handle::{
    BackendStatus, Backups, Domain, Pairing, RoomGone, RoomLink, Rooms, Storage, UploadInfo,
};
pub use ids::{BackupId, CoupleId, DeviceId, IdError, Seq, SignalId};
pub use mailbox::{MailboxLimits, Payload, Signal};
pub use metrics::DomainMetrics;
/// Why the actor tree could not start.
pub use ractor::SpawnErr;
pub use room::{ConnId, Connection, Kick, RoomEvent};
pub use settings::Settings;
pub use store::{BackupRecord, Blob, BlobStore, ByteStream, Store, StoreError};
pub use token::{DeviceToken, PairingToken, SigningSecret, TokenError};
