//! TTLs and bounds of the domain, filled from configuration by the front end.

use std::time::Duration;

use crate::mailbox::MailboxLimits;

/// Every tunable the actors obey. `Default` gives the documented production values.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an undelivered signal is kept (5 minutes).
    pub signal_ttl: Duration,
    /// How long a signal id is remembered to drop resends (5 minutes).
    pub dedupe_window: Duration,
    /// How long a pairing token is valid (24 hours).
    pub pairing_ttl: Duration,
    /// Wrong pairing tokens allowed before the pairing is burned (5).
    pub pairing_max_attempts: u32,
    /// Devices one couple may have (8).
    pub max_devices_per_couple: usize,
    /// Bounds of each device's mailbox.
    pub mailbox: MailboxLimits,
    /// Largest signal payload, serialized (64 KiB).
    pub max_payload_bytes: usize,
    /// How often rooms expire signals and check for idleness.
    pub room_tick: Duration,
    /// A room with no socket and no pending write for this long is stopped.
    pub room_idle_after: Duration,
    /// Longest an HTTP or WebSocket caller waits for an actor before it answers 503.
    pub call_timeout: Duration,
    /// Largest backup accepted (100 MiB).
    pub backup_max_bytes: u64,
    /// Backups kept per couple; older ones are deleted (3).
    pub backup_retention: usize,
    /// Longest pause between two chunks of an upload before it is dropped (60 s).
    pub backup_idle_timeout: Duration,
    /// Longest upload (30 minutes); below the orphan sweep's age, so the sweep never takes
    /// a live upload's parts.
    pub backup_upload_timeout: Duration,
    /// Uploads in progress at once; more get 503 (8). Bounds the memory and disk that
    /// uploads in flight can hold.
    pub backup_max_concurrent: usize,
    /// Storage per couple, in bytes: its kept backups plus the declared length of its
    /// unfinished resumable uploads (4 × `backup_max_bytes`: the kept backups and one upload
    /// in flight, with room to spare).
    pub backup_quota: u64,
    /// How long a resumable upload may stay unfinished before the janitor deletes it and its
    /// bytes (24 hours).
    pub upload_ttl: Duration,
    /// Most parts one resumable upload may have, one per `PATCH` that brought bytes (4096).
    /// Every `PATCH` rewrites the upload's record, which lists its parts: this bounds the
    /// record (about 250 KiB) and what a client sending tiny chunks makes the server write.
    /// 100 MiB in 1 MiB chunks is 100 parts.
    pub upload_max_parts: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            signal_ttl: Duration::from_mins(5),
            dedupe_window: Duration::from_mins(5),
            pairing_ttl: Duration::from_hours(24),
            pairing_max_attempts: 5,
            max_devices_per_couple: 8,
            mailbox: MailboxLimits {
                max_signals: 256,
                max_bytes: 1024 * 1024,
            },
            max_payload_bytes: 64 * 1024,
            room_tick: Duration::from_secs(5),
            room_idle_after: Duration::from_mins(1),
            call_timeout: Duration::from_secs(5),
            backup_max_bytes: 100 * 1024 * 1024,
            backup_retention: 3,
            backup_idle_timeout: Duration::from_mins(1),
            backup_upload_timeout: Duration::from_mins(30),
            backup_max_concurrent: 8,
            backup_quota: 4 * 100 * 1024 * 1024,
            upload_ttl: Duration::from_hours(24),
            upload_max_parts: 4096,
        }
    }
}
