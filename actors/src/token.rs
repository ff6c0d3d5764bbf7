//! Secrets a client holds: the one-time pairing token (stored only as its SHA-256) and the
//! device token, an HMAC-SHA256 credential that binds one device to one couple.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{CoupleId, DeviceId, random_bytes};

/// Longest bearer token accepted before any parsing (a real one is at most 143 characters).
pub const MAX_TOKEN_LEN: usize = 256;

/// Domain separation for device-token MACs, so the secret can never sign anything else by accident.
const DEVICE_TOKEN_CONTEXT: &[u8] = b"our-memories/device-token/v1";

/// The one-time secret shown as a QR code: 256 random bits, unpadded base64url. It is handed to
/// the initiating device once and never stored; only its [`TokenHash`] is.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingToken(String);

impl PairingToken {
    /// A fresh token from the operating system's CSPRNG.
    #[must_use]
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
    }

    /// Wraps what a client sent; any string is acceptable input, it simply will not match.
    #[must_use]
    pub fn from_client(s: String) -> Self {
        Self(s)
    }

    /// The text to show the user (QR code); the only place the secret leaves the server.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 that the server keeps instead of the token.
    #[must_use]
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for PairingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingToken(<redacted>)")
    }
}

/// SHA-256 of a pairing token: what is stored, and compared in constant time.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Constant-time equality, so response timing says nothing about how close a guess was.
    #[must_use]
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A per-device random value baked into its token. A device that is removed and paired again
/// under the same id gets a new nonce, so its old token stays dead.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceNonce(String);

impl DeviceNonce {
    /// 64 random bits, unpadded base64url.
    #[must_use]
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(random_bytes::<8>()))
    }
}

impl fmt::Debug for DeviceNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceNonce(..)")
    }
}

/// The key that signs device tokens (`SIGNALING_SECRET`). `Debug` never prints it.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

/// Shortest secret accepted, in bytes: HMAC-SHA256 wants a full 256-bit key.
pub const MIN_SECRET_LEN: usize = 32;

impl SigningSecret {
    /// Wraps key material, refusing keys too short to be safe.
    pub fn new(bytes: Vec<u8>) -> Result<Self, TokenError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(TokenError::SecretTooShort);
        }
        Ok(Self(bytes))
    }

    /// A fresh random secret (development only: it is then kept in the data directory).
    #[must_use]
    pub fn generate() -> Self {
        Self(URL_SAFE_NO_PAD.encode(random_bytes::<32>()).into_bytes())
    }

    /// The raw key, for writing it to the data directory once.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, couple: &CoupleId, device: &DeviceId, nonce: &DeviceNonce) -> Hmac<Sha256> {
        // unwrap: HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in [
            DEVICE_TOKEN_CONTEXT,
            couple.as_str().as_bytes(),
            device.as_str().as_bytes(),
            nonce.0.as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// Issues the credential for `device` of `couple`.
    #[must_use]
    pub fn issue(&self, couple: &CoupleId, device: &DeviceId, nonce: &DeviceNonce) -> DeviceToken {
        let tag = self.mac(couple, device, nonce).finalize().into_bytes();
        DeviceToken(format!(
            "{couple}.{device}.{}.{}",
            nonce.0,
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    /// Checks the signature (in constant time) and returns who the token speaks for. The caller
    /// must still check that the device exists with this nonce (revocation).
    pub fn verify(&self, token: &DeviceToken) -> Result<TokenClaims, TokenError> {
        let claims = token.claims()?;
        let tag = URL_SAFE_NO_PAD
            .decode(token.tag()?)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(&claims.couple, &claims.device, &claims.nonce)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(claims)
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The bearer credential of a paired device: `coupleId.deviceId.nonce.mac`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken(String);

/// What a verified device token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The couple the device belongs to.
    pub couple: CoupleId,
    /// The device itself.
    pub device: DeviceId,
    /// Must equal the stored device's nonce for the token to be live.
    pub nonce: DeviceNonce,
}

/// Why a device token was refused. Every variant means 401 to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not four dot-separated parts of the right alphabet, or too long.
    #[error("device token is malformed")]
    Malformed,
    /// The MAC does not match: forged, tampered with, or signed by another secret.
    #[error("device token signature is invalid")]
    BadSignature,
    /// Configuration error: the signing key is too short.
    #[error("signing secret must be at least {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
}

impl DeviceToken {
    /// Wraps what a client sent, rejecting oversized input before any work is done.
    pub fn from_client(s: &str) -> Result<Self, TokenError> {
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        Ok(Self(s.to_owned()))
    }

    /// The text to hand to the device.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> Result<[&str; 4], TokenError> {
        let mut it = self.0.split('.');
        let parts = [it.next(), it.next(), it.next(), it.next()];
        match (parts, it.next()) {
            ([Some(a), Some(b), Some(c), Some(d)], None) => Ok([a, b, c, d]),
            _ => Err(TokenError::Malformed),
        }
    }

    fn tag(&self) -> Result<&str, TokenError> {
        Ok(self.parts()?[3])
    }

    fn claims(&self) -> Result<TokenClaims, TokenError> {
        let [couple, device, nonce, _] = self.parts()?;
        let couple = CoupleId::parse(couple).map_err(|_| TokenError::Malformed)?;
        let device = DeviceId::parse(device).map_err(|_| TokenError::Malformed)?;
        if nonce.is_empty() || nonce.len() > 16 {
            return Err(TokenError::Malformed);
        }
        Ok(TokenClaims {
            couple,
            device,
            nonce: DeviceNonce(nonce.to_owned()),
        })
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (CoupleId, DeviceId, DeviceNonce) {
        (
            CoupleId::parse("c1").unwrap(),
            DeviceId::parse("phone").unwrap(),
            DeviceNonce::generate(),
        )
    }

    #[test]
    fn issued_token_verifies_and_names_its_device() {
        let secret = SigningSecret::generate();
        let (c, d, n) = ids();
        let claims = secret.verify(&secret.issue(&c, &d, &n)).unwrap();
        assert_eq!((claims.couple, claims.device, claims.nonce), (c, d, n));
    }

    #[test]
    fn tampering_with_any_part_is_detected() {
        let secret = SigningSecret::generate();
        let (c, d, n) = ids();
        let token = secret.issue(&c, &d, &n);
        let other_couple = token.expose().replacen("c1", "c2", 1);
        let t = DeviceToken::from_client(&other_couple).unwrap();
        assert_eq!(secret.verify(&t), Err(TokenError::BadSignature));
        let other_secret = SigningSecret::generate();
        assert_eq!(other_secret.verify(&token), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_rejected_without_panicking() {
        let secret = SigningSecret::generate();
        for bad in ["", "a.b.c", "a.b.c.d.e", "a b.c.d.e", "c.d.n.!!!", "...."] {
            let t = DeviceToken::from_client(bad).unwrap();
            assert!(secret.verify(&t).is_err(), "{bad:?}");
        }
        assert!(DeviceToken::from_client(&"a".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn pairing_token_has_at_least_128_bits_and_hash_compares() {
        let t = PairingToken::generate();
        assert!(t.expose().len() >= 22);
        assert!(t.hash().matches(&t.hash()));
        assert!(!t.hash().matches(&PairingToken::generate().hash()));
        assert_eq!(format!("{t:?}"), "PairingToken(<redacted>)");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(SigningSecret::new(vec![1; 31]).is_err());
        assert!(SigningSecret::new(vec![1; 32]).is_ok());
    }
}
