//! The WebSocket text-frame parser, `ClientMsg::parse`. Text frames are UTF-8 by the time the
//! server parses them (tungstenite checks), so only valid UTF-8 is passed on.
//!
//! Invariants: never panics; an error is `invalid_request` or `unknown_type`; every accepted id
//! follows the identifier rule; a `webrtc-signal` payload is valid JSON borrowed from the frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use our_memories::ws::protocol::ClientMsg;
use our_memories_fuzz::{check_couple_id, check_device_id, check_signal_id};
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMsg::parse(text) {
        Err(err) => {
            let code = err.code();
            assert!(
                code == "invalid_request" || code == "unknown_type",
                "unexpected error code {code} for {text:?}"
            );
            let _ = err.public_message();
        }
        Ok(ClientMsg::JoinCouple { couple, device, .. }) => {
            check_couple_id(&couple);
            check_device_id(&device);
        }
        Ok(ClientMsg::WebrtcSignal { to, payload, id }) => {
            if let Some(to) = &to {
                check_device_id(to);
            }
            if let Some(id) = &id {
                check_signal_id(id);
            }
            // Relayed untouched: the payload is a slice of the frame, and valid JSON on its own.
            let raw = payload.get();
            let frame = text.as_bytes().as_ptr_range();
            let start = raw.as_ptr();
            assert!(
                frame.start <= start && start.wrapping_add(raw.len()) <= frame.end,
                "payload is not borrowed from the frame"
            );
            let again: &RawValue = serde_json::from_str(raw).expect("payload is valid JSON");
            assert_eq!(again.get(), raw);
        }
        Ok(ClientMsg::Ack { .. } | ClientMsg::LeaveCouple | ClientMsg::Ping) => {}
    }
});
