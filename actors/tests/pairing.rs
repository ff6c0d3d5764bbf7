//! Actor-level tests of pairing and revocation: a fresh tree per test, driven through the
//! `Pairing` handle with claims taken before the state changed (as a request that passed its
//! token check and then waited for the actor would hold them).

use std::time::Duration;

use our_memories_actors::{
    Clock, CoupleId, DeviceId, Domain, DomainMetrics, PairingError, Settings, TokenClaims,
    TokenError,
};

#[path = "support/domain.rs"]
mod support;
use support::domain_with;

async fn domain(dir: &std::path::Path) -> Domain {
    domain_with_clock(dir, Clock::manual()).await
}

async fn domain_with_clock(dir: &std::path::Path, clock: Clock) -> Domain {
    domain_with(
        dir,
        Settings::default(),
        clock,
        DomainMetrics::unregistered(),
    )
    .await
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).expect("valid id")
}

/// Pairs `a` + `b`; returns the couple and both devices' verified claims.
async fn pair(d: &Domain) -> (CoupleId, TokenClaims, TokenClaims) {
    let started = d.pairing.initiate(id("a"), None).await.expect("initiate");
    let confirmed = d
        .pairing
        .confirm(started.couple.clone(), started.pairing_token, id("b"))
        .await
        .expect("confirm");
    let a = d.pairing.authenticate(&started.device_token).await.unwrap();
    let b = d
        .pairing
        .authenticate(&confirmed.device_token)
        .await
        .unwrap();
    (started.couple, a, b)
}

fn revoked_caller(r: &Result<(), PairingError>) -> bool {
    *r == Err(PairingError::InvalidToken(TokenError::BadSignature))
}

#[tokio::test]
async fn two_devices_revoking_each_other_leave_the_couple_one_device() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain(dir.path()).await;
    for _ in 0..5 {
        let (couple, a, b) = pair(&d).await;
        // Both callers passed their token check; the actor takes one request first.
        let (by_a, by_b) = tokio::join!(
            d.pairing.revoke(a.clone(), id("b")),
            d.pairing.revoke(b.clone(), id("a")),
        );
        assert!(
            (by_a.is_ok() && revoked_caller(&by_b)) || (by_b.is_ok() && revoked_caller(&by_a)),
            "exactly one revocation wins, the loser was revoked: {by_a:?} {by_b:?}"
        );
        let left = d.pairing.devices(&couple).await.unwrap();
        assert_eq!(left.len(), 1, "the couple keeps a device");
        // The survivor's token still works, the loser's does not.
        let survivor = if by_a.is_ok() { &a } else { &b };
        assert_eq!(left[0].device, survivor.device);
    }
    d.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_device_revoked_before_its_initiate_reaches_the_actor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain(dir.path()).await;
    let (couple, a, b) = pair(&d).await;
    // `b`'s claims were verified before the revocation, as for a request that was queued.
    d.pairing.revoke(a, id("b")).await.expect("revoke");
    let started = d.pairing.initiate(id("b"), Some(b)).await;
    assert!(
        matches!(started, Err(PairingError::InvalidToken(_))),
        "a revoked device gets no pairing token: {started:?}"
    );
    assert!(
        d.pairing
            .confirm(
                couple.clone(),
                our_memories_actors::PairingToken::generate(),
                id("c")
            )
            .await
            .is_err()
    );
    assert_eq!(d.pairing.devices(&couple).await.unwrap().len(), 1);
    d.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn revocation_closes_the_pairing_the_revoked_device_opened() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain(dir.path()).await;
    let (couple, a, b) = pair(&d).await;
    let opened = d
        .pairing
        .initiate(id("b"), Some(b))
        .await
        .expect("b opens a pairing");
    d.pairing.revoke(a, id("b")).await.expect("revoke");
    let joined = d
        .pairing
        .confirm(couple.clone(), opened.pairing_token, id("c"))
        .await;
    assert!(
        matches!(joined, Err(PairingError::NotFound)),
        "the pairing is gone: {joined:?}"
    );
    let left: Vec<_> = d
        .pairing
        .devices(&couple)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.device)
        .collect();
    assert_eq!(left, [id("a")]);
    d.shutdown(Duration::from_secs(5)).await;
}

/// Just past the default `PAIRING_TTL_SECS` (24 h).
const PAST_TTL: Duration = Duration::from_secs(24 * 3600 + 1);

#[tokio::test]
async fn a_couple_never_confirmed_is_deleted_when_its_pairing_expires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let d = domain_with_clock(dir.path(), clock.clone()).await;
    let lonely = d.pairing.initiate(id("a"), None).await.unwrap();
    let (paired, _, _) = pair(&d).await;
    assert_eq!(d.pairing.expire_unconfirmed_couples().await.unwrap(), 0);
    d.pairing.authenticate(&lonely.device_token).await.unwrap();

    clock.advance(PAST_TTL);
    assert_eq!(d.pairing.expire_unconfirmed_couples().await.unwrap(), 1);
    assert!(matches!(
        d.pairing.authenticate(&lonely.device_token).await,
        Err(PairingError::InvalidToken(_))
    ));
    assert!(d.pairing.devices(&lonely.couple).await.unwrap().is_empty());
    let late = d
        .pairing
        .confirm(lonely.couple.clone(), lonely.pairing_token, id("b"))
        .await;
    assert!(matches!(late, Err(PairingError::NotFound)), "{late:?}");
    assert_eq!(
        d.pairing.devices(&paired).await.unwrap().len(),
        2,
        "a confirmed couple is never expired"
    );
    assert_eq!(d.pairing.expire_unconfirmed_couples().await.unwrap(), 0);
    d.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_new_pairing_delays_but_does_not_cancel_the_expiry_of_an_unconfirmed_couple() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let d = domain_with_clock(dir.path(), clock.clone()).await;
    let lonely = d.pairing.initiate(id("a"), None).await.unwrap();
    let claims = d.pairing.authenticate(&lonely.device_token).await.unwrap();
    clock.advance(Duration::from_hours(23));
    d.pairing.initiate(id("a"), Some(claims)).await.unwrap();
    clock.advance(Duration::from_hours(2));
    assert_eq!(
        d.pairing.expire_unconfirmed_couples().await.unwrap(),
        0,
        "the newer pairing is still open"
    );
    clock.advance(Duration::from_hours(23));
    assert_eq!(d.pairing.expire_unconfirmed_couples().await.unwrap(), 1);
    assert!(d.pairing.authenticate(&lonely.device_token).await.is_err());
    d.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_confirmed_couple_left_with_one_device_is_never_expired() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let d = domain_with_clock(dir.path(), clock.clone()).await;
    let (couple, a, _) = pair(&d).await;
    d.pairing.revoke(a.clone(), id("b")).await.unwrap();
    // The one device left opens a pairing nobody confirms.
    d.pairing.initiate(id("a"), Some(a)).await.unwrap();
    clock.advance(PAST_TTL);
    assert_eq!(d.pairing.expire_unconfirmed_couples().await.unwrap(), 0);
    assert_eq!(d.pairing.devices(&couple).await.unwrap().len(), 1);
    d.shutdown(Duration::from_secs(5)).await;
}
