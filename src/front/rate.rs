//! Rate limits (GCRA, from `governor`): per client IP on the unauthenticated pairing routes
//! (stricter on confirm, the brute-force target), per device on signals (REST and WebSocket
//! messages alike) and on backup uploads. Over a limit: 429 with `Retry-After` and
//! `RateLimit-*` headers. `RATE_LIMIT=off` disables them all (load tests).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actors::token::TokenClaims;
use actors::{CoupleId, DeviceId, Pairing};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use warp::{Filter, Rejection};

use super::auth::authenticated;
use super::conn::PeerAddr;
use super::error::{ApiError, reject};
use crate::config::{Limit, RateConfig};
use crate::metrics::Metrics;

/// One keyed limit and the numbers it was built from (for the headers).
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    limit: u32,
    window: Duration,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    /// `count` events per `window`, all of which may come at once.
    fn new(count: u32, window: Duration) -> Option<Self> {
        let burst = NonZeroU32::new(count)?;
        let quota = Quota::with_period(window / count)?.allow_burst(burst);
        Some(Self {
            limiter: RateLimiter::keyed(quota),
            limit: count,
            window,
        })
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| ApiError::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                limit: self.limit,
                window: self.window,
            })
    }
}

/// Which per-IP limit a route uses.
#[derive(Debug, Clone, Copy)]
pub enum IpLimit {
    /// Every pairing request.
    Pairing,
    /// Confirm attempts (on top of [`IpLimit::Pairing`]).
    Confirm,
}

/// Which per-device limit an action uses.
#[derive(Debug, Clone, Copy)]
pub enum DeviceLimit {
    /// A signal (REST) or any WebSocket message.
    Signal,
    /// A backup upload.
    Backup,
}

impl IpLimit {
    /// Which limit this is, for the metrics.
    #[must_use]
    pub const fn limit(self) -> Limit {
        match self {
            Self::Pairing => Limit::Pairing,
            Self::Confirm => Limit::Confirm,
        }
    }
}

impl DeviceLimit {
    /// Which limit this is, for the metrics.
    #[must_use]
    pub const fn limit(self) -> Limit {
        match self {
            Self::Signal => Limit::Signals,
            Self::Backup => Limit::Backups,
        }
    }
}

type DeviceKey = (CoupleId, DeviceId);

/// Every limiter of the server. Cheap to clone.
#[derive(Clone, Default)]
pub struct RateLimits(Option<Arc<Limiters>>);

struct Limiters {
    trusted_proxies: usize,
    metrics: Metrics,
    pairing: Keyed<IpAddr>,
    confirm: Keyed<IpAddr>,
    signals: Keyed<DeviceKey>,
    backups: Keyed<DeviceKey>,
}

impl Limiters {
    /// Counts a refusal by `limit`.
    fn count(&self, limit: Limit, result: Result<(), ApiError>) -> Result<(), ApiError> {
        if result.is_err() {
            self.metrics.rate_limited(limit);
        }
        result
    }
}

impl RateLimits {
    /// Builds the limiters; `None` inside when disabled (or a count is zero).
    #[must_use]
    pub fn new(config: &RateConfig, metrics: &Metrics) -> Self {
        if !config.enabled {
            return Self(None);
        }
        let limiters = (|| {
            Some(Limiters {
                trusted_proxies: config.trusted_proxies,
                metrics: metrics.clone(),
                pairing: Keyed::new(config.pairing_per_15min, Duration::from_mins(15))?,
                confirm: Keyed::new(config.confirm_per_15min, Duration::from_mins(15))?,
                signals: Keyed::new(
                    config.signals_burst,
                    Duration::from_secs(1) * config.signals_burst / config.signals_per_sec.max(1),
                )?,
                backups: Keyed::new(config.backups_per_hour, Duration::from_hours(1))?,
            })
        })();
        Self(limiters.map(Arc::new))
    }

    /// Counts one request of `ip` against `which`.
    pub fn check_ip(&self, which: IpLimit, ip: IpAddr) -> Result<(), ApiError> {
        let Some(l) = &self.0 else { return Ok(()) };
        let result = match which {
            IpLimit::Pairing => l.pairing.check(&ip),
            IpLimit::Confirm => l.confirm.check(&ip),
        };
        l.count(which.limit(), result)
    }

    /// Counts one action of a device against `which`.
    pub fn check_device(
        &self,
        which: DeviceLimit,
        couple: &CoupleId,
        device: &DeviceId,
    ) -> Result<(), ApiError> {
        let Some(l) = &self.0 else { return Ok(()) };
        let key = (couple.clone(), device.clone());
        let result = match which {
            DeviceLimit::Signal => l.signals.check(&key),
            DeviceLimit::Backup => l.backups.check(&key),
        };
        l.count(which.limit(), result)
    }

    /// Forgets keys whose budget is full again, so the maps do not grow without bound.
    pub fn forget_idle_keys(&self) {
        if let Some(l) = &self.0 {
            l.pairing.limiter.retain_recent();
            l.confirm.limiter.retain_recent();
            l.signals.limiter.retain_recent();
            l.backups.limiter.retain_recent();
        }
    }

    fn trusted_proxies(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.trusted_proxies)
    }
}

/// The client's IP, as Express's `trust proxy = N` finds it: the addresses are the
/// `X-Forwarded-For` entries followed by the socket peer, and each of the `TRUST_PROXY` proxies
/// appended the one before it, so the client is `N` places from the right. Entries left of
/// that were written by the client and are never used. A chain shorter than `N` (or an entry
/// that is not an IP address) gives the leftmost address the proxies vouch for.
fn client_ip(
    limits: &RateLimits,
    peer: Option<PeerAddr>,
    forwarded: Option<&str>,
) -> Option<IpAddr> {
    let peer = peer?.0.ip();
    let mut client = peer;
    let hops = forwarded.into_iter().flat_map(|f| f.rsplit(','));
    for entry in hops.take(limits.trusted_proxies()) {
        match entry.trim().parse() {
            Ok(ip) => client = ip,
            Err(_) => break,
        }
    }
    Some(client)
}

/// A filter that counts the request against a per-IP limit and rejects it with 429 when over.
pub fn limit_ip(
    limits: RateLimits,
    which: IpLimit,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::ext::optional::<PeerAddr>()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and_then(move |peer: Option<PeerAddr>, forwarded: Option<String>| {
            let limits = limits.clone();
            async move {
                match client_ip(&limits, peer, forwarded.as_deref()) {
                    Some(ip) => limits.check_ip(which, ip).map_err(reject),
                    None => Ok(()),
                }
            }
        })
        .untuple_one()
}

/// [`authenticated`], then one action of that device counted against `which`.
pub fn authenticated_within(
    pairing: Pairing,
    limits: RateLimits,
    which: DeviceLimit,
) -> impl Filter<Extract = (TokenClaims,), Error = Rejection> + Clone {
    authenticated(pairing).and_then(move |claims: TokenClaims| {
        let limits = limits.clone();
        async move {
            limits
                .check_device(which, &claims.couple, &claims.device)
                .map_err(reject)?;
            Ok::<_, Rejection>(claims)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_is_allowed_then_limited_with_a_retry_time() {
        let metrics = metrics();
        let limits = RateLimits::new(
            &RateConfig {
                pairing_per_15min: 3,
                ..RateConfig::default()
            },
            &metrics,
        );
        for _ in 0..3 {
            assert!(limits.check_ip(IpLimit::Pairing, ip("10.0.0.1")).is_ok());
        }
        let Err(ApiError::RateLimited {
            retry_after, limit, ..
        }) = limits.check_ip(IpLimit::Pairing, ip("10.0.0.1"))
        else {
            panic!("expected a limit");
        };
        assert_eq!(limit, 3);
        let refused = r#"our_memories_rate_limited_total{limit="pairing"} 1"#;
        assert!(
            metrics.render().unwrap().lines().any(|l| l == refused),
            "counted"
        );
        assert!(retry_after > Duration::from_mins(4) && retry_after <= Duration::from_mins(5));
        assert!(
            limits.check_ip(IpLimit::Pairing, ip("10.0.0.2")).is_ok(),
            "per IP"
        );
    }

    #[test]
    fn the_client_ip_is_taken_from_the_right_past_the_trusted_proxies() {
        let peer = Some(PeerAddr("10.0.0.9:9".parse().unwrap()));
        let behind = |n| {
            RateLimits::new(
                &RateConfig {
                    trusted_proxies: n,
                    ..RateConfig::default()
                },
                &metrics(),
            )
        };
        // The client wrote "6.6.6.6"; one proxy appended the address it saw, 1.2.3.4.
        let xff = Some("6.6.6.6, 1.2.3.4");
        assert_eq!(client_ip(&behind(0), peer, xff), Some(ip("10.0.0.9")));
        assert_eq!(client_ip(&behind(1), peer, xff), Some(ip("1.2.3.4")));
        // Two proxies: the second appended the first's address.
        let xff = Some("6.6.6.6, 1.2.3.4, 10.0.0.8");
        assert_eq!(client_ip(&behind(2), peer, xff), Some(ip("1.2.3.4")));
        // Fewer entries than proxies, or garbage: the leftmost address vouched for.
        assert_eq!(
            client_ip(&behind(3), peer, Some("1.2.3.4")),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            client_ip(&behind(2), peer, Some("1.2.3.4, garbage")),
            Some(ip("10.0.0.9"))
        );
        assert_eq!(client_ip(&behind(1), peer, None), Some(ip("10.0.0.9")));
    }

    #[test]
    fn off_means_no_limit_and_proxies_are_trusted_only_when_told() {
        let off = RateLimits::new(
            &RateConfig {
                enabled: false,
                pairing_per_15min: 1,
                ..RateConfig::default()
            },
            &metrics(),
        );
        for _ in 0..10 {
            assert!(off.check_ip(IpLimit::Pairing, ip("10.0.0.1")).is_ok());
        }
        let peer = Some(PeerAddr("127.0.0.1:9".parse().unwrap()));
        let direct = RateLimits::new(&RateConfig::default(), &metrics());
        assert_eq!(
            client_ip(&direct, peer, Some("1.2.3.4")),
            Some(ip("127.0.0.1"))
        );
        let proxied = RateLimits::new(
            &RateConfig {
                trusted_proxies: 1,
                ..RateConfig::default()
            },
            &metrics(),
        );
        assert_eq!(
            client_ip(&proxied, peer, Some("1.2.3.4, 10.0.0.1")),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            client_ip(&proxied, peer, Some("garbage")),
            Some(ip("127.0.0.1"))
        );
    }
}
