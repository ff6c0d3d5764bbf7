//! Validated identifiers. Everything a client names (a couple, a device, a signal) is parsed
//! into one of these types at the edge, so the domain never handles an unchecked string.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Longest identifier accepted from a client.
pub(crate) const MAX_ID_LEN: usize = 64;

/// Why a client-supplied identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Identifiers must have at least one character.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier (for the message).
        kind: &'static str,
    },
    /// Identifiers are capped so keys and logs stay small.
    #[error("{kind} must be at most {MAX_ID_LEN} characters")]
    TooLong {
        /// Which identifier (for the message).
        kind: &'static str,
    },
    /// Only URL- and key-safe characters are allowed.
    #[error("{kind} may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadChar {
        /// Which identifier (for the message).
        kind: &'static str,
    },
}

/// Checks the shared identifier rule: 1-64 characters of `[A-Za-z0-9_-]`.
fn validate(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IdError::BadChar { kind });
    }
    Ok(())
}

/// `n` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // unwrap: the OS random source only fails on exotic platforms at boot; nothing to recover.
    getrandom::fill(&mut buf).expect("operating system random source failed");
    buf
}

/// A fresh random identifier: 16 bytes (128 bits) as unpadded base64url, 22 characters.
/// From `rand`'s thread-local CSPRNG (a stream cipher seeded and reseeded from the OS), not a
/// system call each: a signal sent without an id gets one, so this runs per relayed message.
/// Secrets (tokens) still come straight from the OS ([`random_bytes`]).
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Deserializes an id from a string with its `parse`. The rule is checked inside the visitor,
/// so a refused id is an error of the string itself: `serde_json` gives it the string's
/// position (not the end of the enclosing object), which the server's messages use to name the
/// field that held it.
struct IdVisitor<T>(fn(String) -> Result<T, IdError>);

impl<T> Visitor<'_> for IdVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        self.visit_string(s.to_owned())
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<T, E> {
        (self.0)(s).map_err(E::custom)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses a client-supplied value, enforcing the identifier rule.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate($kind, &s)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_string(IdVisitor(|s| Self::parse(s)))
            }
        }
    };
}

id_type!(
    /// A couple: the unit of isolation. Created by the server at pairing, never chosen by a client.
    CoupleId,
    "coupleId"
);
id_type!(
    /// A device within a couple, chosen by the app (unique inside its couple only).
    DeviceId,
    "deviceId"
);
id_type!(
    /// Names one signal so that a resend can be recognised and not delivered twice.
    SignalId,
    "id"
);

impl CoupleId {
    /// A new unguessable couple id (128 random bits).
    #[must_use]
    pub fn generate() -> Self {
        Self(random_id())
    }
}

id_type!(
    /// One stored backup of a couple. Chosen by the server.
    BackupId,
    "backupId"
);

impl BackupId {
    /// A fresh, unguessable backup id.
    #[must_use]
    pub fn generate() -> Self {
        Self(random_id())
    }
}

id_type!(
    /// One resumable (tus) upload of a couple. Chosen by the server.
    UploadId,
    "uploadId"
);

impl UploadId {
    /// A fresh, unguessable upload id.
    #[must_use]
    pub fn generate() -> Self {
        Self(random_id())
    }
}

impl SignalId {
    /// A server-chosen id for a signal the client sent without one.
    #[must_use]
    pub fn generate() -> Self {
        Self(random_id())
    }
}

/// Position of a signal in one device's mailbox. Strictly increasing per device, also across
/// restarts; not necessarily contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(DeviceId::parse("Phone_1-a").is_ok());
        assert!(DeviceId::parse("x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert!(matches!(DeviceId::parse(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            DeviceId::parse("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        for bad in ["a b", "a.b", "a/b", "é", "a\0"] {
            assert!(
                matches!(DeviceId::parse(bad), Err(IdError::BadChar { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<CoupleId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<CoupleId>("\"not ok\"").is_err());
        // The error is the string's: its position is right after it, not at the list's end.
        let err = serde_json::from_str::<Vec<CoupleId>>(r#"["ok", "not ok" ]"#).unwrap_err();
        assert_eq!(err.column(), 15, "{err}");
        assert!(
            err.to_string().starts_with("coupleId may only contain"),
            "{err}"
        );
        let value = serde_json::json!(["a", "b c"]);
        assert!(serde_json::from_value::<Vec<DeviceId>>(value).is_err());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = CoupleId::generate();
        let b = CoupleId::generate();
        assert_ne!(a, b);
        assert!(CoupleId::parse(a.as_str()).is_ok());
        assert_eq!(a.as_str().len(), 22);
    }
}
