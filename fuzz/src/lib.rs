//! Checks shared by the fuzz targets in `fuzz_targets/` (see docs/fuzzing.md).

use our_memories_actors::{CoupleId, DeviceId, IdError, SignalId};

/// The documented identifier rule (docs/protocol.md §2), written independently of the server's:
/// 1 to 64 characters of `[A-Za-z0-9_-]`.
#[must_use]
pub fn follows_id_rule(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! id_checks {
    ($($ty:ident: $parse:ident, $check:ident;)*) => {$(
        /// Parses `s` and checks that the result agrees with the documented rule and, when it
        /// is accepted, that the id keeps exactly the input text.
        pub fn $parse(s: &str) -> Result<$ty, IdError> {
            let parsed = $ty::parse(s);
            assert_eq!(parsed.is_ok(), follows_id_rule(s), "rule mismatch for {s:?}");
            if let Ok(id) = &parsed {
                assert_eq!(id.as_str(), s);
                $check(id);
            }
            parsed
        }

        /// Invariants of any accepted id (parsed directly, or decoded from JSON): it follows the
        /// rule, and survives `as_str`, `Display` and a JSON round trip unchanged.
        pub fn $check(id: &$ty) {
            let text = id.as_str();
            assert!(follows_id_rule(text), "accepted an invalid id {text:?}");
            assert_eq!(&$ty::parse(text).expect("an accepted id re-parses"), id);
            assert_eq!(id.to_string(), text);
            let json = serde_json::to_string(id).expect("ids serialize");
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(&serde_json::from_str::<$ty>(&json).expect("ids deserialize"), id);
        }
    )*};
}

id_checks! {
    CoupleId: parse_couple_id, check_couple_id;
    DeviceId: parse_device_id, check_device_id;
    SignalId: parse_signal_id, check_signal_id;
}
