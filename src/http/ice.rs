//! `GET /api/ice-servers`: the STUN and TURN servers a paired device gives its
//! `RTCPeerConnection`, in the shape of its `iceServers` option (W3C WebRTC,
//! `RTCIceServer`), with short-lived TURN credentials.
//!
//! The credentials follow the TURN REST scheme (draft-uberti-behave-turn-rest-00) that coturn
//! checks with `use-auth-secret`: the username is `<unix expiry>:<user>` and the credential is
//! `base64(HMAC-SHA1(TURN_SECRET, username))`. The TURN server needs no user database and
//! refuses the credential once the expiry has passed. TURN servers log usernames, so the user
//! part is an opaque pseudonym of the couple and device, never their ids.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actors::token::TokenClaims;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha1::Sha1;
use sha2::Sha256;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::config::{IceConfig, TurnConfig};
use crate::front::rate::{DeviceLimit, authenticated_within};
use crate::front::wire::{named, with};
use crate::state::AppState;

/// One entry of `iceServers`.
#[derive(Serialize)]
struct IceServer<'a> {
    urls: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

/// The answer: the servers, and how many seconds the credentials stay valid.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IceServers<'a> {
    ice_servers: Vec<IceServer<'a>>,
    ttl: u64,
}

/// The route. Bearer device token; counts against the device's signal budget.
pub fn route(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    warp::path!("api" / "ice-servers")
        .and(warp::get())
        .and(named("/api/ice-servers"))
        .and(with(std::sync::Arc::clone(&state.ice)))
        .and(authenticated_within(
            state.pairing.clone(),
            state.limits.clone(),
            DeviceLimit::Signal,
        ))
        .map(|ice: std::sync::Arc<IceConfig>, claims: TokenClaims| {
            warp::reply::json(&answer(&ice, &claims, SystemTime::now())).into_response()
        })
}

fn answer<'a>(ice: &'a IceConfig, claims: &TokenClaims, now: SystemTime) -> IceServers<'a> {
    let mut servers = Vec::new();
    if !ice.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: &ice.stun_urls,
            username: None,
            credential: None,
        });
    }
    if let Some(turn) = &ice.turn {
        let (username, credential) = credentials(turn, ice.ttl, claims, now);
        servers.push(IceServer {
            urls: &turn.urls,
            username: Some(username),
            credential: Some(credential),
        });
    }
    IceServers {
        ice_servers: servers,
        ttl: ice.ttl.as_secs(),
    }
}

/// The TURN REST username (`<expiry>:<pseudonym>`) and credential for this device.
fn credentials(
    turn: &TurnConfig,
    ttl: Duration,
    claims: &TokenClaims,
    now: SystemTime,
) -> (String, String) {
    let expiry = (now + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let username = format!("{expiry}:{}", pseudonym(turn, claims));
    (username.clone(), sign(turn.secret.expose(), &username))
}

/// `base64(HMAC-SHA1(secret, username))`, what coturn's `use-auth-secret` recomputes.
fn sign(secret: &str, username: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// 32 hex digits that stand for the couple and device in the TURN server's logs: the same
/// device always gets the same one (an operator can follow a device's relays), but nobody
/// without the secret can tell which couple it is.
fn pseudonym(turn: &TurnConfig, claims: &TokenClaims) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(turn.secret.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"our-memories turn user\0");
    mac.update(claims.couple.as_str().as_bytes());
    mac.update(b"\0");
    mac.update(claims.device.as_str().as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_the_turn_rest_hmac_of_the_username() {
        // RFC 2202's HMAC-SHA1 test case 2, which coturn's check computes the same way.
        let tag = sign("Jefe", "what do ya want for nothing?");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(tag)
                .unwrap(),
            hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap()
        );
    }
}
