//! Device tokens and identifiers: `DeviceToken::from_client` + `SigningSecret::verify` with a
//! fixed secret, and `CoupleId` / `DeviceId` / `SignalId::parse`.
//!
//! The first byte picks the mode, the rest must be UTF-8 (a bearer token or an id is text):
//! - even: the text as a client token and as each kind of id. `verify` must not panic, tokens
//!   over 256 bytes are refused up front, and a forged token never verifies; ids must agree
//!   with the documented rule and round-trip (`as_str`, `Display`, JSON).
//! - odd: `couple \n device \n nonce \n tamper`. If both ids are valid, a token is issued for
//!   them; it must verify to the same claims exactly when the nonce is acceptable (1 to 16
//!   bytes, no '.'), and must stop verifying after any change to one of its bytes.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use our_memories_actors::token::{DeviceNonce, MAX_TOKEN_LEN, TokenClaims};
use our_memories_actors::{DeviceToken, SigningSecret, TokenError};
use our_memories_fuzz::{
    check_couple_id, check_device_id, parse_couple_id, parse_device_id, parse_signal_id,
};

static SECRET: LazyLock<SigningSecret> =
    LazyLock::new(|| SigningSecret::new(vec![7u8; 32]).expect("32 bytes is long enough"));

fn check_claims(claims: &TokenClaims) {
    check_couple_id(&claims.couple);
    check_device_id(&claims.device);
}

fn client_token(text: &str) {
    let token = DeviceToken::from_client(text);
    if text.len() > MAX_TOKEN_LEN {
        assert_eq!(
            token,
            Err(TokenError::Malformed),
            "oversized token accepted"
        );
        return;
    }
    let token = token.expect("tokens up to MAX_TOKEN_LEN are taken as input");
    assert_eq!(token.expose(), text);
    match SECRET.verify(&token) {
        // Only possible if the input is a token this secret issued: prove it by reissuing.
        Ok(claims) => {
            check_claims(&claims);
            let reissued = SECRET.issue(&claims.couple, &claims.device, &claims.nonce);
            assert_eq!(
                reissued.expose(),
                text,
                "a token verified that was not issued"
            );
        }
        Err(e) => assert!(
            matches!(e, TokenError::Malformed | TokenError::BadSignature),
            "{e:?}"
        ),
    }
}

fn issued_token(text: &str) {
    let mut fields = text.splitn(4, '\n');
    let (Some(couple), Some(device), Some(nonce)) = (fields.next(), fields.next(), fields.next())
    else {
        return;
    };
    let tamper = fields.next().unwrap_or("").as_bytes();
    let (Ok(couple), Ok(device)) = (parse_couple_id(couple), parse_device_id(device)) else {
        return;
    };
    let nonce_ok = !nonce.is_empty() && nonce.len() <= 16 && !nonce.contains('.');
    let Ok(nonce) = serde_json::from_value::<DeviceNonce>(serde_json::Value::from(nonce)) else {
        return;
    };
    let token = SECRET.issue(&couple, &device, &nonce);
    let expected = TokenClaims {
        couple,
        device,
        nonce,
    };
    match SECRET.verify(&token) {
        Ok(claims) => {
            assert!(nonce_ok, "verified a token with a bad nonce");
            assert_eq!(claims, expected);
            assert!(token.expose().len() <= MAX_TOKEN_LEN);
            let from_client = DeviceToken::from_client(token.expose()).expect("issued tokens fit");
            assert_eq!(SECRET.verify(&from_client), Ok(expected));
        }
        Err(e) => {
            assert!(!nonce_ok, "an issued token did not verify: {e:?}");
            assert_eq!(e, TokenError::Malformed);
            return;
        }
    }
    // Tamper: xor one byte of the token (position and mask from the input).
    let [pos_hi, pos_lo, mask, ..] = *tamper else {
        return;
    };
    if mask == 0 {
        return;
    }
    let mut bytes = token.expose().as_bytes().to_vec();
    let pos = usize::from(u16::from_be_bytes([pos_hi, pos_lo])) % bytes.len();
    bytes[pos] ^= mask;
    let Ok(changed) = String::from_utf8(bytes) else {
        return;
    };
    let changed = DeviceToken::from_client(&changed).expect("same length");
    assert!(
        SECRET.verify(&changed).is_err(),
        "a token still verified after changing byte {pos}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        client_token(text);
        let _ = parse_couple_id(text);
        let _ = parse_device_id(text);
        let _ = parse_signal_id(text);
    } else {
        issued_token(text);
    }
});
