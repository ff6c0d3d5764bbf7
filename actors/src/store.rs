//! What the domain needs from persistence, as one trait, so the actors do not know which
//! database sits behind them. [`embedded::EmbeddedStore`] is the default; other backends
//! implement the same trait and pass the same conformance tests.

pub mod embedded;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
use crate::token::{DeviceNonce, TokenHash};

/// A storage failure. Deliberately opaque to clients: any variant is a 503 at the edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the operation; retrying later may work.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded: the data on disk is not what this version wrote.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// A device registered in a couple. Its existence (with this nonce) is what makes its token live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The couple the device belongs to.
    pub couple: CoupleId,
    /// The device's id, unique inside the couple.
    pub device: DeviceId,
    /// Baked into the device's token; a re-paired device gets a new one.
    pub nonce: DeviceNonce,
    /// When the device was paired.
    pub paired_at: Timestamp,
}

/// An open pairing of a couple: at most one per couple, replaced by a newer initiate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairingRecord {
    /// The couple a confirming device will join.
    pub couple: CoupleId,
    /// SHA-256 of the one-time token; the token itself is never stored.
    pub token_hash: TokenHash,
    /// After this instant the pairing answers 410 and may be swept.
    pub expires_at: Timestamp,
    /// When the record is deleted: a while after expiry, so a late confirm still gets
    /// `pairing_used` / `pairing_expired` instead of `pairing_not_found`.
    pub purge_at: Timestamp,
    /// Wrong tokens tried so far; at the cap the pairing is burned.
    pub failed_attempts: u32,
    /// Set by a successful confirm: the token is single use.
    pub consumed: bool,
}

/// A signal waiting in a device's mailbox, kept on disk while its recipient is offline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSignal {
    /// The couple (room) the signal belongs to.
    pub couple: CoupleId,
    /// The recipient, whose mailbox this is.
    pub to: DeviceId,
    /// Position in the recipient's mailbox.
    pub seq: Seq,
    /// The sender's (or server's) id for de-duplicating resends.
    pub id: SignalId,
    /// The sending device.
    pub from: DeviceId,
    /// The opaque payload, as the JSON text the sender wrote.
    pub payload: String,
    /// When the server accepted it.
    pub created_at: Timestamp,
    /// When it stops being deliverable.
    pub expires_at: Timestamp,
}

/// Persistence for pairings, devices and mailboxes. Every method is one atomic step; the
/// actors serialise the read-modify-write sequences per couple.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for `/health` and logs (`"embedded"`, `"mongodb"`).
    fn backend(&self) -> &'static str;

    /// Registers a device and saves the couple's pairing in one atomic step, so a pairing is
    /// never consumed without its device (or the reverse). Uniqueness of the device inside the
    /// couple is checked by the pairing actor.
    async fn save_device_and_pairing(
        &self,
        device: &DeviceRecord,
        pairing: &PairingRecord,
    ) -> Result<(), StoreError>;

    /// One device of a couple, if registered.
    async fn device(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// All devices of a couple.
    async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Creates or replaces the couple's open pairing.
    async fn put_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError>;

    /// The couple's open pairing, if any and not yet swept (expired ones may still be returned:
    /// the caller decides between 410 and 404 with its own clock).
    async fn pairing(&self, couple: &CoupleId) -> Result<Option<PairingRecord>, StoreError>;

    /// Bumps and returns the couple's mailbox epoch. Each activation of a room takes a new
    /// epoch, which keeps sequence numbers increasing across restarts without a write per signal.
    async fn next_epoch(&self, couple: &CoupleId) -> Result<u64, StoreError>;

    /// Persists signals for offline recipients; durable when this returns.
    async fn put_signals(&self, signals: &[StoredSignal]) -> Result<(), StoreError>;

    /// Records that `device` has everything up to `up_to`, and forgets those signals.
    async fn ack_signals(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        up_to: Seq,
    ) -> Result<(), StoreError>;

    /// Every unacknowledged, unexpired signal of the couple, ordered by recipient and seq.
    async fn pending_signals(
        &self,
        couple: &CoupleId,
        now: Timestamp,
    ) -> Result<Vec<StoredSignal>, StoreError>;

    /// Deletes expired signals and pairings past their `purge_at`; returns how many went.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;
}
