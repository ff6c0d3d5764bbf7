//! The couple's devices: `GET /api/devices` lists them, `DELETE /api/devices/:deviceId`
//! revokes one (from another device of the couple).

use actors::DeviceId;
use actors::token::TokenClaims;
use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::auth::authenticated;
use super::error::reject;
use super::named;
use super::pairing::rfc3339;
use crate::state::{AppState, with_state};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireDevice<'a> {
    device_id: &'a DeviceId,
    paired_at: String,
}

#[derive(Serialize)]
struct DeviceList<'a> {
    devices: Vec<WireDevice<'a>>,
}

/// Both device routes.
pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let list = warp::path!("api" / "devices")
        .and(warp::get())
        .and(named("/api/devices"))
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and_then(list);
    let revoke = warp::path!("api" / "devices" / String)
        .and(warp::delete())
        .and(named("/api/devices/{deviceId}"))
        .and(with_state(state.clone()))
        .and(authenticated(state))
        .and_then(revoke);
    list.or(revoke)
}

async fn list(state: AppState, claims: TokenClaims) -> Result<warp::reply::Response, Rejection> {
    let mut devices = state
        .pairing
        .devices(&claims.couple)
        .await
        .map_err(reject)?;
    devices.sort_by_key(|d| (d.paired_at, d.device.clone()));
    let wire = devices
        .iter()
        .map(|d| WireDevice {
            device_id: &d.device,
            paired_at: rfc3339(d.paired_at),
        })
        .collect();
    Ok(warp::reply::json(&DeviceList { devices: wire }).into_response())
}

async fn revoke(
    device: String,
    state: AppState,
    claims: TokenClaims,
) -> Result<warp::reply::Response, Rejection> {
    let device = DeviceId::parse(device).map_err(reject)?;
    state.pairing.revoke(claims, device).await.map_err(reject)?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}
