//! The REST fallback on the same mailboxes as the WebSocket: `POST /api/signal` and
//! `GET /api/signals/:coupleId/:deviceId?after=<seq>`.

use actors::token::TokenClaims;
use actors::{CoupleId, DeviceId, Payload, Seq, SignalId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::auth::require_access;
use super::error::{ApiError, reject};
use super::named;
use super::pairing::rfc3339;
use super::rate::{DeviceLimit, authenticated_within};
use super::{SIGNAL_BODY_LIMIT, json_body};
use crate::state::{AppState, with_state};

/// Body of `POST /api/signal`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendBody {
    /// The couple.
    pub couple_id: CoupleId,
    /// The sender (must be the token's device).
    pub from_device_id: DeviceId,
    /// The recipient.
    pub to_device_id: DeviceId,
    /// Any JSON value, relayed untouched.
    pub signal_payload: Box<RawValue>,
}

#[derive(Serialize)]
struct SendReply<'a> {
    id: &'a SignalId,
    seq: Seq,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchQuery {
    after: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireSignal<'a> {
    id: &'a SignalId,
    seq: Seq,
    from_device_id: &'a DeviceId,
    signal_payload: &'a RawValue,
    created_at: String,
}

#[derive(Serialize)]
struct FetchReply<'a> {
    signals: Vec<WireSignal<'a>>,
}

/// Both REST signal routes.
pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let send = warp::path!("api" / "signal")
        .and(warp::post())
        .and(named("/api/signal"))
        .and(with_state(state.clone()))
        .and(authenticated_within(state.clone(), DeviceLimit::Signal))
        .and(json_body::<SendBody>(SIGNAL_BODY_LIMIT))
        .and_then(send);
    let fetch = warp::path!("api" / "signals" / String / String)
        .and(warp::get())
        .and(named("/api/signals/{coupleId}/{deviceId}"))
        .and(with_state(state.clone()))
        .and(authenticated_within(state, DeviceLimit::Signal))
        .and(warp::query::<FetchQuery>())
        .and_then(fetch);
    send.or(fetch)
}

async fn send(
    state: AppState,
    claims: TokenClaims,
    body: SendBody,
) -> Result<warp::reply::Response, Rejection> {
    require_access(&claims, &body.couple_id, Some(&body.from_device_id)).map_err(reject)?;
    let payload = Payload::new(body.signal_payload.get());
    let accepted = state
        .rooms
        .send(
            &body.couple_id,
            &body.from_device_id,
            &body.to_device_id,
            payload,
        )
        .await
        .map_err(reject)?;
    let reply = SendReply {
        id: &accepted.id,
        seq: accepted.seq,
    };
    Ok(warp::reply::with_status(warp::reply::json(&reply), StatusCode::ACCEPTED).into_response())
}

async fn fetch(
    couple: String,
    device: String,
    state: AppState,
    claims: TokenClaims,
    query: FetchQuery,
) -> Result<warp::reply::Response, Rejection> {
    let couple = CoupleId::parse(couple).map_err(reject)?;
    let device = DeviceId::parse(device).map_err(reject)?;
    require_access(&claims, &couple, Some(&device)).map_err(reject)?;
    let signals = state
        .rooms
        .fetch(&couple, &device, query.after.map(Seq))
        .await
        .map_err(reject)?;
    let wire = signals
        .iter()
        .map(|s| {
            Ok(WireSignal {
                id: &s.id,
                seq: s.seq,
                from_device_id: &s.from,
                signal_payload: raw_json(s.payload.as_str())?,
                created_at: rfc3339(s.created_at),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .map_err(reject)?;
    Ok(warp::reply::json(&FetchReply { signals: wire }).into_response())
}

/// Borrows stored payload text as raw JSON. It was validated on the way in, so a failure here
/// means corrupt storage: an internal error, logged.
pub fn raw_json(text: &str) -> Result<&RawValue, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        tracing::error!(cause = %e, "stored payload is not valid JSON");
        ApiError::Internal
    })
}
