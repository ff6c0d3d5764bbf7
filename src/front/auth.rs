//! Bearer authentication: turns `Authorization: Bearer <deviceToken>` into verified claims,
//! and the access rule every route applies: a token only opens its own couple and device.

use actors::token::TokenClaims;
use actors::{CoupleId, DeviceId, DeviceToken, Pairing};
use warp::{Filter, Rejection};

use super::error::{ApiError, reject};

/// The bearer token, if the request carries one (not yet verified).
pub fn bearer() -> impl Filter<Extract = (Option<DeviceToken>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(|h: Option<String>| async move {
        match h {
            None => Ok(None),
            Some(h) => parse_bearer(&h).map(Some).map_err(reject),
        }
    })
}

/// The credentials of a `Bearer` `Authorization` value, trimmed; `None` for another scheme.
pub fn strip_bearer(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
}

/// Parses an `Authorization` value.
pub fn parse_bearer(header: &str) -> Result<DeviceToken, ApiError> {
    let token = strip_bearer(header).ok_or(ApiError::MissingToken)?;
    DeviceToken::from_client(token).map_err(|e| ApiError::Pairing(e.into()))
}

/// A verified device token; rejects with 401 if missing or invalid.
pub fn authenticated(
    pairing: Pairing,
) -> impl Filter<Extract = (TokenClaims,), Error = Rejection> + Clone {
    bearer().and_then(move |token: Option<DeviceToken>| {
        let pairing = pairing.clone();
        async move {
            let token = token.ok_or_else(|| reject(ApiError::MissingToken))?;
            pairing.authenticate(&token).await.map_err(reject)
        }
    })
}

/// The access rule: the token must be for exactly this couple (and device, when given).
pub fn require_access(
    claims: &TokenClaims,
    couple: &CoupleId,
    device: Option<&DeviceId>,
) -> Result<(), ApiError> {
    let device_ok = device.is_none_or(|d| *d == claims.device);
    if claims.couple == *couple && device_ok {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}
