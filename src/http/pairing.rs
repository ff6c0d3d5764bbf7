//! `POST /api/pair/initiate` and `POST /api/pair/confirm`.

use actors::{CoupleId, DeviceId, DeviceToken, PairingToken, Timestamp};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::auth::bearer;
use super::error::{ApiError, reject};
use super::named;
use super::rate::{IpLimit, limit_ip};
use super::{PAIRING_BODY_LIMIT, json_body};
use crate::metrics::PairingStep;
use crate::state::{AppState, with_state};

/// Body of `POST /api/pair/initiate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitiateBody {
    /// The initiating device.
    pub device_id: DeviceId,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InitiateReply<'a> {
    couple_id: &'a CoupleId,
    pairing_token: &'a str,
    device_token: &'a str,
    expires_at: String,
}

/// Body of `POST /api/pair/confirm`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfirmBody {
    /// The couple to join.
    pub couple_id: CoupleId,
    /// The token from the QR code.
    pub pairing_token: String,
    /// The joining device.
    pub device_id: DeviceId,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfirmReply<'a> {
    couple_id: &'a CoupleId,
    device_token: &'a str,
}

/// RFC 3339 with milliseconds, UTC: what every timestamp on the wire looks like.
#[must_use]
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

/// Both pairing routes.
pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let initiate = warp::path!("api" / "pair" / "initiate")
        .and(warp::post())
        .and(named("/api/pair/initiate"))
        .and(limit_ip(state.limits.clone(), IpLimit::Pairing))
        .and(with_state(state.clone()))
        .and(bearer())
        .and(json_body::<InitiateBody>(PAIRING_BODY_LIMIT))
        .and_then(initiate);
    let confirm = warp::path!("api" / "pair" / "confirm")
        .and(warp::post())
        .and(named("/api/pair/confirm"))
        .and(limit_ip(state.limits.clone(), IpLimit::Pairing))
        .and(limit_ip(state.limits.clone(), IpLimit::Confirm))
        .and(with_state(state))
        .and(json_body::<ConfirmBody>(PAIRING_BODY_LIMIT))
        .and_then(confirm);
    initiate.or(confirm)
}

async fn initiate(
    state: AppState,
    bearer: Option<DeviceToken>,
    body: InitiateBody,
) -> Result<warp::reply::Response, Rejection> {
    let started = state
        .pairing
        .initiate(body.device_id, bearer.as_ref())
        .await
        .map_err(ApiError::from);
    state.metrics.pairing(PairingStep::Initiate, &started);
    let started = started.map_err(reject)?;
    let reply = InitiateReply {
        couple_id: &started.couple,
        pairing_token: started.pairing_token.expose(),
        device_token: started.device_token.expose(),
        expires_at: rfc3339(started.expires_at),
    };
    Ok(warp::reply::with_status(warp::reply::json(&reply), StatusCode::CREATED).into_response())
}

async fn confirm(state: AppState, body: ConfirmBody) -> Result<warp::reply::Response, Rejection> {
    let done = state
        .pairing
        .confirm(
            body.couple_id,
            PairingToken::from_client(body.pairing_token),
            body.device_id,
        )
        .await
        .map_err(ApiError::from);
    state.metrics.pairing(PairingStep::Confirm, &done);
    let done = done.map_err(reject)?;
    let reply = ConfirmReply {
        couple_id: &done.couple,
        device_token: done.device_token.expose(),
    };
    Ok(warp::reply::json(&reply).into_response())
}
