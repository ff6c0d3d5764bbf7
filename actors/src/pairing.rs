//! The pairing actor: creates couples, opens pairings and lets a second device confirm one.
//! All pairing state changes go through this one actor, so the attempt counter and the
//! single-use rule cannot race.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::clock::{Clock, Timestamp};
use crate::error::PairingError;
use crate::ids::{CoupleId, DeviceId};
use crate::room::RoomMsg;
use crate::settings::Settings;
use crate::store::{DeviceRecord, PairingRecord, Store, StoreError};
use crate::supervisor::SupervisorMsg;
use crate::token::{DeviceNonce, DeviceToken, PairingToken, SigningSecret, TokenClaims};

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
pub enum PairingMsg {
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
pub struct PairingActor;

/// What the pairing actor works with (cloned into each restart).
#[derive(Clone)]
pub struct PairingArgs {
    /// Where couples, devices and pairings persist.
    pub store: Arc<dyn Store>,
    /// Signs device tokens.
    pub secret: SigningSecret,
    /// TTLs and caps.
    pub settings: Settings,
    /// Time source.
    pub clock: Clock,
    /// Told about new devices so a running room knows them.
    pub rooms: ActorRef<SupervisorMsg>,
}

impl From<StoreError> for PairingError {
    fn from(e: StoreError) -> Self {
        tracing::error!(cause = %e, "pairing storage failed");
        PairingError::StorageUnavailable
    }
}

impl PairingArgs {
    /// A fresh pairing record for `couple`.
    fn new_pairing(
        &self,
        couple: &CoupleId,
        token: &PairingToken,
        now: Timestamp,
    ) -> PairingRecord {
        let expires_at = now.plus(self.settings.pairing_ttl);
        PairingRecord {
            couple: couple.clone(),
            token_hash: token.hash(),
            expires_at,
            purge_at: expires_at.plus(PAIRING_KEPT_AFTER_EXPIRY),
            failed_attempts: 0,
            consumed: false,
        }
    }

    async fn initiate(
        &self,
        device: DeviceId,
        by: Option<TokenClaims>,
    ) -> Result<Initiated, PairingError> {
        let now = self.clock.now();
        let pairing_token = PairingToken::generate();
        let (couple, nonce, pairing) = if let Some(claims) = by {
            if claims.device != device {
                return Err(PairingError::WrongDevice);
            }
            let count = self.store.devices(&claims.couple).await?.len();
            if count >= self.settings.max_devices_per_couple {
                return Err(PairingError::CoupleFull {
                    max: self.settings.max_devices_per_couple,
                });
            }
            let pairing = self.new_pairing(&claims.couple, &pairing_token, now);
            self.store.put_pairing(&pairing).await?;
            (claims.couple, claims.nonce, pairing)
        } else {
            let couple = CoupleId::generate();
            let nonce = DeviceNonce::generate();
            let pairing = self.new_pairing(&couple, &pairing_token, now);
            let record = DeviceRecord {
                couple: couple.clone(),
                device: device.clone(),
                nonce: nonce.clone(),
                paired_at: now,
            };
            self.store
                .save_device_and_pairing(&record, &pairing)
                .await?;
            (couple, nonce, pairing)
        };
        let device_token = self.secret.issue(&couple, &device, &nonce);
        Ok(Initiated {
            couple,
            pairing_token,
            device_token,
            expires_at: pairing.expires_at,
        })
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
            .await?
            .ok_or(PairingError::NotFound)?;
        if pairing.failed_attempts >= self.settings.pairing_max_attempts {
            return Err(PairingError::Burned);
        }
        if !pairing.token_hash.matches(&token.hash()) {
            pairing.failed_attempts += 1;
            self.store.put_pairing(&pairing).await?;
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
        let devices = self.store.devices(&couple).await?;
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
        self.store
            .save_device_and_pairing(&record, &pairing)
            .await?;
        let _ = self.rooms.cast(SupervisorMsg::Forward {
            couple: couple.clone(),
            msg: RoomMsg::DeviceAdded(device.clone()),
        });
        let device_token = self.secret.issue(&couple, &device, &nonce);
        Ok(Confirmed {
            couple,
            device_token,
        })
    }
}

impl PairingArgs {
    async fn revoke(&self, by: &TokenClaims, device: DeviceId) -> Result<(), PairingError> {
        if by.device == device {
            return Err(PairingError::SelfRevocation);
        }
        if self.store.device(&by.couple, &device).await?.is_none() {
            return Err(PairingError::UnknownDevice);
        }
        self.store.remove_device(&by.couple, &device).await?;
        let _ = self.rooms.cast(SupervisorMsg::Forward {
            couple: by.couple.clone(),
            msg: RoomMsg::DeviceRevoked(device),
        });
        Ok(())
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
            PairingMsg::Initiate { device, by, reply } => {
                let _ = reply.send(st.initiate(device, by).await);
            }
            PairingMsg::Revoke { by, device, reply } => {
                let _ = reply.send(st.revoke(&by, device).await);
            }
            #[cfg(feature = "fault-injection")]
            PairingMsg::Panic => panic!("fault injection: the pairing actor panics"),
            PairingMsg::Confirm {
                couple,
                token,
                device,
                reply,
            } => {
                let _ = reply.send(st.confirm(couple, &token, device).await);
            }
        }
        Ok(())
    }
}
