//! The pairing actor: creates couples, opens pairings and lets a second device confirm one.
//! All pairing state changes go through this one actor, so the attempt counter and the
//! single-use rule cannot race. It tells running rooms about new and revoked devices through
//! the [`Rooms`] handle.
//!
//! Beside it is its handle, [`Pairing`]: pairing calls go to the actor (restarted by its
//! keeper when it fails), while token checks read the store directly.
//!
//! Device and pairing records are written through the domain's one writer, which commits
//! them in batches with other writes. An initiate that creates a couple does not wait for
//! its write: nothing else can know the new couple before the reply, so the actor queues the
//! write, moves on to the next request, and the reply goes out once the write is committed.
//! That is what lets concurrent initiates share a commit. Every other request reads and
//! writes records other requests may touch, and waits for its write.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};

use crate::call::call_kept;
use crate::clock::{Clock, Timestamp};
use crate::error::PairingError;
use crate::ids::{CoupleId, DeviceId};
use crate::keeper::{Keeper, Slot};
use crate::metrics::{DomainMetrics, Restarted};
use crate::settings::Settings;
use crate::store::group_commit::{Done, GroupCommit};
use crate::store::{DeviceRecord, PairingRecord, Store, StoreError, Write};
use crate::supervisor::Rooms;
use crate::token::{
    DeviceNonce, DeviceToken, PairingToken, SigningSecret, TokenClaims, TokenError,
};

/// How long a pairing record (its token hash and counters) outlives its expiry, so a late
/// confirm still gets `pairing_expired` or `pairing_used` rather than `pairing_not_found`.
pub const PAIRING_KEPT_AFTER_EXPIRY: std::time::Duration = std::time::Duration::from_hours(24);

/// The answer to a successful initiate.
#[derive(Debug, Clone)]
pub struct Initiated {
    /// The (new or existing) couple.
    pub couple: CoupleId,
    /// The one-time token to show as a QR code.
    pub pairing_token: PairingToken,
    /// The initiating device's credential.
    pub device_token: DeviceToken,
    /// When the pairing token stops working.
    pub expires_at: Timestamp,
}

/// The answer to a successful confirm.
#[derive(Debug, Clone)]
pub struct Confirmed {
    /// The couple joined.
    pub couple: CoupleId,
    /// The new device's credential.
    pub device_token: DeviceToken,
}

/// Requests to the pairing actor.
#[derive(Debug)]
pub(crate) enum PairingMsg {
    /// Start a pairing: for a new couple, or (with `by`) for one more device of an existing one.
    Initiate {
        /// The initiating device.
        device: DeviceId,
        /// The verified token of an already paired device, if one was sent.
        by: Option<TokenClaims>,
        /// The result.
        reply: RpcReplyPort<Result<Initiated, PairingError>>,
    },
    /// Remove another device of the caller's couple; its token stops working at once.
    Revoke {
        /// The verified caller.
        by: TokenClaims,
        /// The device to remove.
        device: DeviceId,
        /// Done (or why not).
        reply: RpcReplyPort<Result<(), PairingError>>,
    },
    /// Delete the couples whose pairing expired unconfirmed (the janitor asks every minute).
    ExpireCouples {
        /// How many couples went.
        reply: RpcReplyPort<Result<u64, PairingError>>,
    },
    /// Test hook: make the actor panic, to exercise its restart.
    #[cfg(feature = "fault-injection")]
    Panic,
    /// Join a couple with its pairing token.
    Confirm {
        /// The couple to join.
        couple: CoupleId,
        /// The token from the QR code.
        token: PairingToken,
        /// The joining device.
        device: DeviceId,
        /// The result.
        reply: RpcReplyPort<Result<Confirmed, PairingError>>,
    },
}

/// The pairing actor.
#[derive(Default)]
pub(crate) struct PairingActor;

/// What the pairing actor works with (cloned into each restart).
#[derive(Clone)]
pub(crate) struct PairingArgs {
    /// Where couples, devices and pairings persist.
    pub store: Arc<dyn Store>,
    /// The domain's one writer, for device and pairing records.
    pub writer: GroupCommit,
    /// Signs device tokens.
    pub secret: SigningSecret,
    /// TTLs and caps.
    pub settings: Settings,
    /// Time source.
    pub clock: Clock,
    /// Told about new and revoked devices so a running room knows them.
    pub rooms: Rooms,
}

/// What a caller of the store answers when the store fails: the cause is logged here, at
/// the failed call, and the client hears only `storage_unavailable`.
#[expect(
    clippy::needless_pass_by_value,
    reason = "takes the error by value to be used as `map_err(storage_failed)`"
)]
fn storage_failed(e: StoreError) -> PairingError {
    tracing::error!(cause = %e, "pairing storage failed");
    PairingError::StorageUnavailable
}

impl PairingArgs {
    /// A fresh pairing record for `couple`; `unconfirmed` while the couple has only the device
    /// that created it.
    fn new_pairing(
        &self,
        couple: &CoupleId,
        token: &PairingToken,
        now: Timestamp,
        unconfirmed: bool,
    ) -> PairingRecord {
        let expires_at = now.plus(self.settings.pairing_ttl);
        PairingRecord {
            couple: couple.clone(),
            token_hash: token.hash(),
            expires_at,
            purge_at: expires_at.plus(PAIRING_KEPT_AFTER_EXPIRY),
            failed_attempts: 0,
            consumed: false,
            unconfirmed,
        }
    }

    /// An initiate by a paired device (`claims`): a new pairing for one more device of its
    /// couple.
    async fn initiate(
        &self,
        device: DeviceId,
        claims: TokenClaims,
    ) -> Result<Initiated, PairingError> {
        let now = self.clock.now();
        let pairing_token = PairingToken::generate();
        // The token was checked before the call queued here; a revocation handled in
        // between must still stop it.
        let devices = self.acting(&claims).await?;
        if claims.device != device {
            return Err(PairingError::WrongDevice);
        }
        if devices.len() >= self.settings.max_devices_per_couple {
            return Err(PairingError::CoupleFull {
                max: self.settings.max_devices_per_couple,
            });
        }
        // A couple that was never confirmed stays so: a new pairing does not make it
        // permanent (it is still deleted if this one expires unconfirmed).
        let unconfirmed = self
            .store
            .pairing(&claims.couple)
            .await
            .map_err(storage_failed)?
            .is_some_and(|p| p.unconfirmed);
        let pairing = self.new_pairing(&claims.couple, &pairing_token, now, unconfirmed);
        self.store
            .put_pairing(&pairing)
            .await
            .map_err(storage_failed)?;
        let device_token = self.secret.issue(&claims.couple, &device, &claims.nonce);
        Ok(Initiated {
            couple: claims.couple,
            pairing_token,
            device_token,
            expires_at: pairing.expires_at,
        })
    }

    /// A new couple with `device` in it and its first pairing: the write that creates them,
    /// and the answer once it is committed.
    fn found_couple(&self, device: DeviceId) -> (Write, Initiated) {
        let now = self.clock.now();
        let pairing_token = PairingToken::generate();
        let couple = CoupleId::generate();
        let nonce = DeviceNonce::generate();
        let pairing = self.new_pairing(&couple, &pairing_token, now, true);
        let device_token = self.secret.issue(&couple, &device, &nonce);
        let initiated = Initiated {
            couple: couple.clone(),
            pairing_token,
            device_token,
            expires_at: pairing.expires_at,
        };
        let record = DeviceRecord {
            couple,
            device,
            nonce,
            paired_at: now,
        };
        let write = Write::DeviceAndPairing {
            device: record,
            pairing,
        };
        (write, initiated)
    }

    /// Checks in this order: burned, token (a wrong one counts toward the cap), used, expired,
    /// device id, couple size. The state of a pairing is only revealed to a holder of its token.
    async fn confirm(
        &self,
        couple: CoupleId,
        token: &PairingToken,
        device: DeviceId,
    ) -> Result<Confirmed, PairingError> {
        let now = self.clock.now();
        let mut pairing = self
            .store
            .pairing(&couple)
            .await
            .map_err(storage_failed)?
            .ok_or(PairingError::NotFound)?;
        if pairing.failed_attempts >= self.settings.pairing_max_attempts {
            return Err(PairingError::Burned);
        }
        if !pairing.token_hash.matches(&token.hash()) {
            pairing.failed_attempts += 1;
            self.store
                .put_pairing(&pairing)
                .await
                .map_err(storage_failed)?;
            return Err(
                if pairing.failed_attempts >= self.settings.pairing_max_attempts {
                    PairingError::Burned
                } else {
                    PairingError::WrongToken
                },
            );
        }
        if pairing.consumed {
            return Err(PairingError::AlreadyUsed);
        }
        if pairing.expires_at <= now {
            return Err(PairingError::Expired);
        }
        let devices = self.store.devices(&couple).await.map_err(storage_failed)?;
        if devices.iter().any(|d| d.device == device) {
            return Err(PairingError::DeviceTaken);
        }
        if devices.len() >= self.settings.max_devices_per_couple {
            return Err(PairingError::CoupleFull {
                max: self.settings.max_devices_per_couple,
            });
        }
        let nonce = DeviceNonce::generate();
        let record = DeviceRecord {
            couple: couple.clone(),
            device: device.clone(),
            nonce: nonce.clone(),
            paired_at: now,
        };
        pairing.consumed = true;
        pairing.unconfirmed = false;
        let mut devices = devices;
        devices.push(record.clone());
        self.writer
            .write(Write::DeviceAndPairing {
                device: record,
                pairing,
            })
            .await
            .map_err(storage_failed)?;
        self.rooms
            .device_added(couple.clone(), device.clone(), &devices)
            .await;
        let device_token = self.secret.issue(&couple, &device, &nonce);
        Ok(Confirmed {
            couple,
            device_token,
        })
    }
}

impl PairingArgs {
    /// The devices of the caller's couple, once the caller is known to be one of them with
    /// the nonce of its token. The handle checks tokens before a call queues here; this check
    /// runs in the same serialised step as the action, so a device revoked while its request
    /// waited cannot act.
    async fn acting(&self, by: &TokenClaims) -> Result<Vec<DeviceRecord>, PairingError> {
        let devices = self
            .store
            .devices(&by.couple)
            .await
            .map_err(storage_failed)?;
        if devices
            .iter()
            .any(|d| d.device == by.device && d.nonce == by.nonce)
        {
            Ok(devices)
        } else {
            Err(PairingError::InvalidToken(TokenError::BadSignature))
        }
    }

    /// Checks in this order: the caller still registered, not itself, the target registered,
    /// a device left afterwards. Then closes the couple's open pairing (the revoked device may
    /// know its token) and removes the device.
    async fn revoke(&self, by: &TokenClaims, device: DeviceId) -> Result<(), PairingError> {
        let devices = self.acting(by).await?;
        if by.device == device {
            return Err(PairingError::SelfRevocation);
        }
        if !devices.iter().any(|d| d.device == device) {
            return Err(PairingError::UnknownDevice);
        }
        // The caller is registered and is not the target, so this holds; it is checked so
        // the rule never depends on how the lines above are ordered.
        if !devices.iter().any(|d| d.device != device) {
            return Err(PairingError::LastDevice);
        }
        self.store
            .revoke_device(&by.couple, &device)
            .await
            .map_err(storage_failed)?;
        self.rooms.device_revoked(by.couple.clone(), device).await;
        Ok(())
    }

    /// Deletes the never-confirmed couples whose pairing has expired. Done here, not by the
    /// janitor on the store directly, so it cannot interleave with a confirm of the same
    /// couple: a confirm handled first makes the couple permanent, one handled after finds
    /// no pairing. A running room drops the deleted device as if it were revoked.
    async fn expire_couples(&self) -> Result<u64, PairingError> {
        let gone = self
            .store
            .expire_unconfirmed_couples(self.clock.now())
            .await
            .map_err(storage_failed)?;
        let count = gone.len() as u64;
        for expired in gone {
            for device in expired.devices {
                self.rooms
                    .device_revoked(expired.couple.clone(), device)
                    .await;
            }
        }
        Ok(count)
    }
}

impl Actor for PairingActor {
    type Msg = PairingMsg;
    type State = PairingArgs;
    type Arguments = PairingArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<PairingMsg>,
        args: PairingArgs,
    ) -> Result<PairingArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<PairingMsg>,
        msg: PairingMsg,
        st: &mut PairingArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // A new couple: queued, not waited for (see the module's doc).
            PairingMsg::Initiate {
                device,
                by: None,
                reply,
            } => {
                let (write, initiated) = st.found_couple(device);
                let done: Done = Box::new(move |outcome| {
                    let _ = reply.send(outcome.map(|()| initiated).map_err(storage_failed));
                });
                st.writer.submit(write, done).await;
            }
            PairingMsg::Initiate {
                device,
                by: Some(claims),
                reply,
            } => {
                let _ = reply.send(st.initiate(device, claims).await);
            }
            PairingMsg::Revoke { by, device, reply } => {
                let revoked = st.rooms.exclusive(&by.couple, st.revoke(&by, device)).await;
                let _ = reply.send(revoked.unwrap_or(Err(PairingError::StorageUnavailable)));
            }
            PairingMsg::ExpireCouples { reply } => {
                let _ = reply.send(st.expire_couples().await);
            }
            #[cfg(feature = "fault-injection")]
            PairingMsg::Panic => panic!("fault injection: the pairing actor panics"),
            PairingMsg::Confirm {
                couple,
                token,
                device,
                reply,
            } => {
                let confirmed = st
                    .rooms
                    .exclusive(&couple.clone(), st.confirm(couple, &token, device))
                    .await;
                let _ = reply.send(confirmed.unwrap_or(Err(PairingError::StorageUnavailable)));
            }
        }
        Ok(())
    }
}

/// Handle to pairing and authentication.
#[derive(Clone)]
pub struct Pairing {
    actor: Slot<PairingMsg>,
    store: Arc<dyn Store>,
    secret: SigningSecret,
    timeout: Duration,
}

impl Pairing {
    /// Spawns the pairing actor under its keeper; returns the handle and the keeper (stopped
    /// at shutdown).
    pub(crate) async fn start(
        store: &Arc<dyn Store>,
        writer: GroupCommit,
        secret: SigningSecret,
        settings: &Settings,
        clock: &Clock,
        rooms: Rooms,
        metrics: &DomainMetrics,
    ) -> Result<(Self, ActorRef<()>), SpawnErr> {
        let args = PairingArgs {
            store: Arc::clone(store),
            writer,
            secret: secret.clone(),
            settings: settings.clone(),
            clock: clock.clone(),
            rooms,
        };
        let (keeper, actor) =
            Keeper::<PairingActor>::start(args, metrics.clone(), Restarted::Pairing).await?;
        let handle = Self {
            actor,
            store: Arc::clone(store),
            secret,
            timeout: settings.call_timeout,
        };
        Ok((handle, keeper))
    }

    /// Starts a pairing. With the verified claims of a paired device (see
    /// [`Pairing::authenticate`]) it adds a device to that device's couple; without, it creates
    /// a couple. The actor checks again that the device is still registered, in the same step
    /// as it opens the pairing.
    pub async fn initiate(
        &self,
        device: DeviceId,
        by: Option<TokenClaims>,
    ) -> Result<Initiated, PairingError> {
        call_kept(
            &self.actor,
            |reply| PairingMsg::Initiate { device, by, reply },
            self.timeout,
            PairingError::Unavailable,
        )
        .await
    }

    /// Confirms a pairing with its one-time token.
    pub async fn confirm(
        &self,
        couple: CoupleId,
        token: PairingToken,
        device: DeviceId,
    ) -> Result<Confirmed, PairingError> {
        call_kept(
            &self.actor,
            |reply| PairingMsg::Confirm {
                couple,
                token,
                device,
                reply,
            },
            self.timeout,
            PairingError::Unavailable,
        )
        .await
    }

    /// Test hook: makes the pairing actor panic and waits until its keeper has restarted it.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self) {
        let mut slot = self.actor.clone();
        if let Some(actor) = slot.current() {
            let _ = actor.cast(PairingMsg::Panic);
            slot.replaced(actor.get_id()).await;
        }
    }

    /// Revokes `device` of the caller's couple: its token stops working and its socket is
    /// closed at once, and the couple's open pairing is closed. The actor checks that the caller
    /// is still registered in the same step, so of two devices revoking each other at once,
    /// only the first succeeds.
    pub async fn revoke(&self, by: TokenClaims, device: DeviceId) -> Result<(), PairingError> {
        call_kept(
            &self.actor,
            |reply| PairingMsg::Revoke { by, device, reply },
            self.timeout,
            PairingError::Unavailable,
        )
        .await
    }

    /// Deletes the couples that were never confirmed and whose pairing has expired (with no
    /// backup): their device's token stops working. The janitor calls this every minute;
    /// returns how many couples went.
    pub async fn expire_unconfirmed_couples(&self) -> Result<u64, PairingError> {
        call_kept(
            &self.actor,
            |reply| PairingMsg::ExpireCouples { reply },
            self.timeout,
            PairingError::Unavailable,
        )
        .await
    }

    /// The devices of a couple.
    pub async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, PairingError> {
        self.store.devices(couple).await.map_err(storage_failed)
    }

    /// Verifies a device token: the signature (constant time) and that the device is still
    /// registered with the same nonce. Read-only, so it does not queue behind pairing work.
    pub async fn authenticate(&self, token: &DeviceToken) -> Result<TokenClaims, PairingError> {
        let claims = self.secret.verify(token)?;
        let device = self
            .store
            .device(&claims.couple, &claims.device)
            .await
            .map_err(storage_failed)?;
        match device {
            Some(d) if d.nonce == claims.nonce => Ok(claims),
            _ => Err(PairingError::InvalidToken(TokenError::BadSignature)),
        }
    }
}
