//! The couple's devices: `GET /api/devices` lists them, `DELETE /api/devices/:deviceId`
//! revokes one (from another device of the couple).

use actors::token::TokenClaims;
use actors::{DeviceId, Pairing};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::front::auth::authenticated;
use crate::front::error::reject;
use crate::front::wire::{named, rfc3339, with};
use crate::state::AppState;

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
pub fn routes(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let pairing = || with(state.pairing.clone()).and(authenticated(state.pairing.clone()));
    let list = warp::path!("api" / "devices")
        .and(warp::get())
        .and(named("/api/devices"))
        .and(pairing())
        .and_then(list);
    let revoke = warp::path!("api" / "devices" / String)
        .and(warp::delete())
        .and(named("/api/devices/{deviceId}"))
        .and(pairing())
        .and_then(revoke);
    list.or(revoke).unify()
}

async fn list(pairing: Pairing, claims: TokenClaims) -> Result<warp::reply::Response, Rejection> {
    let mut devices = pairing.devices(&claims.couple).await.map_err(reject)?;
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
    pairing: Pairing,
    claims: TokenClaims,
) -> Result<warp::reply::Response, Rejection> {
    let device = DeviceId::parse(device).map_err(reject)?;
    pairing.revoke(claims, device).await.map_err(reject)?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}
