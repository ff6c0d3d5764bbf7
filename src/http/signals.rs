//! The REST fallback on the same mailboxes as the WebSocket: `POST /api/signal` and
//! `GET /api/signals/:coupleId/:deviceId?after=<seq>`.

use actors::token::TokenClaims;
use actors::{CoupleId, DeviceId, Payload, Rooms, Seq, SignalId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::SIGNAL_BODY_LIMIT;
use crate::front::auth::require_access;
use crate::front::error::{ApiError, reject};
use crate::front::rate::{DeviceLimit, authenticated_within};
use crate::front::wire::{check_depth, json_body, named, rfc3339, with};
use crate::state::AppState;

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
    /// Any JSON value, relayed untouched (nested at most `MAX_JSON_DEPTH` deep).
    #[serde(deserialize_with = "shallow_payload")]
    pub signal_payload: Box<RawValue>,
}

/// A payload whose nesting is checked while the body is parsed.
fn shallow_payload<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<RawValue>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    check_depth(&raw, "signalPayload").map_err(serde::de::Error::custom)?;
    Ok(raw)
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
pub fn routes(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let device = || {
        authenticated_within(
            state.pairing.clone(),
            state.limits.clone(),
            DeviceLimit::Signal,
        )
    };
    let send = warp::path!("api" / "signal")
        .and(warp::post())
        .and(named("/api/signal"))
        .and(with(state.rooms.clone()))
        .and(device())
        .and(json_body::<SendBody>(SIGNAL_BODY_LIMIT, state.body_timeout))
        .and_then(send);
    let fetch = warp::path!("api" / "signals" / String / String)
        .and(warp::get())
        .and(named("/api/signals/{coupleId}/{deviceId}"))
        .and(with(state.rooms.clone()))
        .and(device())
        .and(fetch_query())
        .and_then(fetch);
    send.or(fetch).unify()
}

/// The fetch's query string. warp's refusal only says "Invalid query string" (it drops the
/// parser's error), so the route says what it takes.
fn fetch_query() -> impl Filter<Extract = (FetchQuery,), Error = Rejection> + Clone {
    warp::query::<FetchQuery>().or_else(|_| async {
        Err(reject(ApiError::InvalidRequest(
            "query string: expected only `after`, a non-negative integer".to_owned(),
        )))
    })
}

async fn send(
    rooms: Rooms,
    claims: TokenClaims,
    body: SendBody,
) -> Result<warp::reply::Response, Rejection> {
    require_access(&claims, &body.couple_id, Some(&body.from_device_id)).map_err(reject)?;
    let payload = Payload::new(body.signal_payload);
    let accepted = rooms
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
    rooms: Rooms,
    claims: TokenClaims,
    query: FetchQuery,
) -> Result<warp::reply::Response, Rejection> {
    let couple = CoupleId::parse(couple).map_err(reject)?;
    let device = DeviceId::parse(device).map_err(reject)?;
    require_access(&claims, &couple, Some(&device)).map_err(reject)?;
    let signals = rooms
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
                signal_payload: s.payload.as_raw(),
                created_at: rfc3339(s.created_at),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .map_err(reject)?;
    Ok(warp::reply::json(&FetchReply { signals: wire }).into_response())
}
