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
//! The crate exposes handles and value types, re-exported here; the actors, their messages
//! and their states are private. Only [`store`] (for other backends), [`token`] and
//! [`metrics`] (for the front end's registry) are public modules.
//! - `ids.rs`, `digest.rs`, [`token`], `clock.rs`: validated identifiers, the SHA-256 digest,
//!   secrets and time.
//! - `error.rs`: one error enum per actor ([`RoomError`], [`PairingError`], [`BackupError`]).
//! - `settings.rs`: TTLs and bounds ([`Settings`]); [`metrics`]: the domain's metric handles.
//! - `mailbox.rs`: one device's ordered, bounded queue of signals.
//! - `room.rs`: one couple's room actor and the events it sends a socket; `room/dedupe.rs`:
//!   its resend window; `room/persist.rs`: its background writes to the store.
//! - `supervisor.rs`: the room supervisor and its handles [`Rooms`] and [`RoomLink`].
//! - `pairing.rs`: the pairing actor and its handle [`Pairing`].
//! - `backup.rs`: the backup actor, its handle [`Backups`] and the upload algorithm.
//! - `keeper.rs`: restarts the pairing and backup actors when they fail.
//! - `call.rs`: how handles call actors, every wait bounded by a timeout.
//! - `domain.rs`: [`Domain`] starts the tree, shuts it down and runs the store janitor.
//! - [`store`]: the persistence traits, the [`Storage`] health handle, the embedded store and
//!   the file blob store.
#![warn(missing_docs, unreachable_pub)]

mod backup;
mod call;
mod clock;
pub mod cluster;
mod digest;
mod domain;
mod error;
mod ids;
mod keeper;
mod mailbox;
pub mod metrics;
mod pairing;
mod room;
mod settings;
pub mod store;
mod supervisor;
pub mod token;

pub use backup::{
    Backups, ChecksumAlgorithm, ChunkChecksum, NewUpload, ORPHAN_AGE, Progress, UploadInfo, Usage,
};
pub use clock::{Clock, Timestamp};
pub use digest::{DigestError, Sha256Digest};
pub use domain::Domain;
pub use error::{BackupError, PairingError, RoomError};
pub use ids::{BackupId, CoupleId, DeviceId, IdError, Seq, SignalId, UploadId};
pub use mailbox::{MailboxLimits, Payload, Signal};
pub use metrics::{DomainMetrics, Transport};
pub use pairing::{Confirmed, Initiated, PAIRING_KEPT_AFTER_EXPIRY, Pairing};
/// Why the actor tree could not start.
pub use ractor::SpawnErr;
pub use room::{Accepted, ConnId, Connection, Joined, Kick, RoomEvent};
pub use settings::Settings;
pub use store::{
    BackendStatus, BackupRecord, Blob, BlobStore, ByteStream, Storage, Store, StoreError,
};
pub use supervisor::{RoomGone, RoomLink, Rooms, SupervisorStats};
pub use token::{DeviceToken, PairingToken, SigningSecret, TokenClaims, TokenError};
