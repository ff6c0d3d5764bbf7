//! A SHA-256 digest, parsed once: what a backup's bytes hash to, and what a client declares
//! they hash to. The front end parses the declared one at the edge; records store and show
//! it as 64 lowercase hex digits.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SHA-256 digest. Written (`Display`, serde) as 64 lowercase hex digits, so it is the
/// same text in the store, in JSON and in an `ETag`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

/// Why a text is not a SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a SHA-256 digest is 64 hex digits")]
pub struct DigestError;

impl Sha256Digest {
    /// Parses 64 hex digits, in either case.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| DigestError)?;
        Ok(Self(bytes))
    }

    /// Wraps the 32 bytes a hasher produced.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest's bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn parses_either_case_and_shows_lowercase() {
        let lower = Sha256Digest::parse(HELLO).unwrap();
        let upper = Sha256Digest::parse(&HELLO.to_ascii_uppercase()).unwrap();
        assert_eq!(lower, upper);
        assert_eq!(upper.to_string(), HELLO);
        assert_eq!(lower.as_bytes()[0], 0x2c);
    }

    #[test]
    fn rejects_wrong_length_and_foreign_characters() {
        for bad in [
            "",
            "ab",
            &HELLO[1..],
            &format!("{HELLO}0"),
            &HELLO.replace('2', "g"),
        ] {
            assert_eq!(Sha256Digest::parse(bad), Err(DigestError), "{bad:?}");
        }
        let spaced = format!(" {}", &HELLO[1..]);
        assert_eq!(Sha256Digest::parse(&spaced), Err(DigestError));
    }

    #[test]
    fn serde_is_the_lowercase_hex_string() {
        let d = Sha256Digest::parse(&HELLO.to_ascii_uppercase()).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{HELLO}\""));
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Sha256Digest>("\"nothex\"").is_err());
    }
}
