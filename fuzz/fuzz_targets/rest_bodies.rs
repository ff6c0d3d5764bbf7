//! The REST JSON bodies, through `front::wire::parse_json` (the one function every JSON route
//! uses).
//! The first byte picks the body type, the rest is the body:
//! `0` `InitiateBody` (`POST /api/pair/initiate`), `1` `ConfirmBody` (`POST /api/pair/confirm`),
//! `2` `SendBody` (`POST /api/signal`); other values are taken modulo 3.
//!
//! Invariants: never panics; every error is `invalid_request`; every accepted id follows the
//! identifier rule; an accepted `signalPayload` is valid JSON and a verbatim slice of the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use our_memories::front::error::ApiError;
use our_memories::front::wire::parse_json;
use our_memories::http::pairing::{ConfirmBody, InitiateBody};
use our_memories::http::signals::SendBody;
use our_memories_fuzz::{check_couple_id, check_device_id};
use serde_json::value::RawValue;

fn expect_invalid_request(err: &ApiError) {
    assert_eq!(err.code(), "invalid_request", "{err:?}");
    let _ = err.public_message();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => match parse_json::<InitiateBody>(body) {
            Ok(b) => check_device_id(&b.device_id),
            Err(e) => expect_invalid_request(&e),
        },
        1 => match parse_json::<ConfirmBody>(body) {
            Ok(b) => {
                check_couple_id(&b.couple_id);
                check_device_id(&b.device_id);
                let _ = b.pairing_token.len();
            }
            Err(e) => expect_invalid_request(&e),
        },
        _ => match parse_json::<SendBody>(body) {
            Ok(b) => {
                check_couple_id(&b.couple_id);
                check_device_id(&b.from_device_id);
                check_device_id(&b.to_device_id);
                // Relayed byte for byte: the payload text appears verbatim in the body.
                let raw = b.signal_payload.get();
                let again: &RawValue = serde_json::from_str(raw).expect("payload is valid JSON");
                assert_eq!(again.get(), raw);
                assert!(
                    body.windows(raw.len().max(1)).any(|w| w == raw.as_bytes()),
                    "payload is not a slice of the body"
                );
            }
            Err(e) => expect_invalid_request(&e),
        },
    }
});
