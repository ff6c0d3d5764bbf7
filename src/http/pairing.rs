//! `POST /api/pair/initiate` and `POST /api/pair/confirm`.

use actors::{CoupleId, DeviceId, DeviceToken, Pairing, PairingToken};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::PAIRING_BODY_LIMIT;
use crate::front::auth::bearer;
use crate::front::error::{ApiError, reject};
use crate::front::rate::{IpLimit, limit_ip};
use crate::front::wire::{json_body, named, rfc3339, with};
use crate::metrics::{Metrics, PairingStep};
use crate::state::AppState;

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

/// Both pairing routes.
pub fn routes(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let handles = with((state.pairing.clone(), state.metrics.clone()));
    let initiate = warp::path!("api" / "pair" / "initiate")
        .and(warp::post())
        .and(named("/api/pair/initiate"))
        .and(limit_ip(state.limits.clone(), IpLimit::Pairing))
        .and(handles.clone())
        .and(bearer())
        .and(json_body::<InitiateBody>(
            PAIRING_BODY_LIMIT,
            state.body_timeout,
        ))
        .and_then(initiate);
    let confirm = warp::path!("api" / "pair" / "confirm")
        .and(warp::post())
        .and(named("/api/pair/confirm"))
        .and(limit_ip(state.limits.clone(), IpLimit::Pairing))
        .and(limit_ip(state.limits.clone(), IpLimit::Confirm))
        .and(handles)
        .and(json_body::<ConfirmBody>(
            PAIRING_BODY_LIMIT,
            state.body_timeout,
        ))
        .and_then(confirm);
    initiate.or(confirm).unify()
}

async fn initiate(
    (pairing, metrics): (Pairing, Metrics),
    bearer: Option<DeviceToken>,
    body: InitiateBody,
) -> Result<warp::reply::Response, Rejection> {
    let started = async {
        let by = match bearer {
            Some(token) => Some(pairing.authenticate(&token).await?),
            None => None,
        };
        pairing.initiate(body.device_id, by).await
    }
    .await
    .map_err(ApiError::from);
    metrics.pairing(PairingStep::Initiate, ApiError::outcome_of(&started));
    let started = started.map_err(reject)?;
    let reply = InitiateReply {
        couple_id: &started.couple,
        pairing_token: started.pairing_token.expose(),
        device_token: started.device_token.expose(),
        expires_at: rfc3339(started.expires_at),
    };
    Ok(warp::reply::with_status(warp::reply::json(&reply), StatusCode::CREATED).into_response())
}

async fn confirm(
    (pairing, metrics): (Pairing, Metrics),
    body: ConfirmBody,
) -> Result<warp::reply::Response, Rejection> {
    let done = pairing
        .confirm(
            body.couple_id,
            PairingToken::from_client(body.pairing_token),
            body.device_id,
        )
        .await
        .map_err(ApiError::from);
    metrics.pairing(PairingStep::Confirm, ApiError::outcome_of(&done));
    let done = done.map_err(reject)?;
    let reply = ConfirmReply {
        couple_id: &done.couple,
        device_token: done.device_token.expose(),
    };
    Ok(warp::reply::json(&reply).into_response())
}
