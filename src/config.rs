//! Configuration, from environment variables only. Every variable is read and validated at
//! start; an error names the variable. `env.example` documents each one.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use actors::{MailboxLimits, Settings};

/// Default HTTP port (the seed's).
pub const DEFAULT_PORT: u16 = 3000;
/// Default data directory for the embedded store and the development secret.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// How often a socket is pinged.
pub const DEFAULT_WS_HEARTBEAT: Duration = Duration::from_secs(2);
/// How often a socket alone in its room is pinged: nobody watches its presence, so the
/// heartbeat only keeps proxies and NATs from dropping the idle connection (nginx's default
/// `proxy_read_timeout` is 60 s) and finds dead sockets eventually. Socket.IO's default
/// `pingInterval` is the same 25 s.
pub const DEFAULT_WS_ALONE_HEARTBEAT: Duration = Duration::from_secs(25);
/// Silence after which a socket is closed; with the heartbeat, a vanished peer is reported
/// as `peer-left` within 10 seconds.
pub const DEFAULT_WS_CLIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// Largest WebSocket message: room for a 64 KiB payload plus its envelope, so an oversized
/// payload gets a clean `payload_too_large` instead of a dropped connection.
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Events queued for one socket before it counts as a slow consumer.
pub const DEFAULT_WS_OUTBOUND_QUEUE: usize = 512;
/// Time for an upgraded WebSocket to send `join-couple`.
pub const DEFAULT_WS_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served in full, before the file-descriptor limit lowers it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Connections from one IP: a household behind one NAT, with room to spare.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Time to receive a JSON body (at most 72 KiB): generous for a phone, short for an attacker.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept free below the limit: the metrics listener, storage, uploads in
/// flight, logs, and the connections that answer refusals and probes when the cap is reached.
pub const FD_RESERVE: usize = 256;
/// Longest graceful shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest signal TTL: stored acknowledgements (which hide late writes of acked signals)
/// are kept one hour.
pub const MAX_SIGNAL_TTL: Duration = Duration::from_hours(1);
/// Default bound on every storage operation (and on the connection check at start).
pub const DEFAULT_STORAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A secret string from the environment (a URI with a password, a key). `Debug` hides it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value (configuration built in code, e.g. by tests).
    #[must_use]
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the one place that needs it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Settings {
    /// `S3_BUCKET`.
    pub bucket: String,
    /// `AWS_REGION`.
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
    /// `S3_ENDPOINT`, for S3-compatible servers (implies path-style addressing).
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The browser origins allowed to call the API and open WebSockets. Empty: none (native apps
/// send no `Origin` and are unaffected).
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<HashSet<String>>);

impl AllowedOrigins {
    /// From the comma-separated `ALLOWED_ORIGINS` value.
    #[must_use]
    pub fn parse(list: &str) -> Self {
        Self(Arc::new(
            list.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        ))
    }

    /// Whether a WebSocket upgrade with this `Origin` (if any) may proceed. No `Origin`: not
    /// a browser. A listed origin, or a page of this server itself: an origin whose
    /// `host[:port]` is the request's `Host` (the same-origin rule of gorilla/websocket's
    /// default check), such as the demo page; another site's page cannot send our `Host`
    /// with its own `Origin`.
    #[must_use]
    pub fn permits(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        origin.is_none_or(|o| {
            self.0.contains(o)
                || o.split_once("://").is_some_and(|(_, authority)| {
                    host.is_some_and(|h| authority.eq_ignore_ascii_case(h))
                })
        })
    }

    /// Whether this exact origin is in the list.
    #[must_use]
    pub fn contains(&self, origin: &str) -> bool {
        self.0.contains(origin)
    }
}

/// The limits, from the environment.
#[derive(Debug, Clone)]
pub struct RateConfig {
    /// `RATE_LIMIT`: `off` disables every limit.
    pub enabled: bool,
    /// `TRUST_PROXY`: how many reverse proxies stand in front of the server (0: none). The
    /// client IP is then taken that many hops from the right of `X-Forwarded-For` + the socket
    /// peer, the entries those proxies appended (Express's `trust proxy = N`), never from an
    /// entry the client could write itself.
    pub trusted_proxies: usize,
    /// `RATE_LIMIT_PAIRING_PER_15MIN`: pairing requests per IP per 15 minutes (100).
    pub pairing_per_15min: u32,
    /// `RATE_LIMIT_CONFIRM_PER_15MIN`: confirm attempts per IP per 15 minutes (20).
    pub confirm_per_15min: u32,
    /// `RATE_LIMIT_SIGNALS_PER_SEC`: sustained signals (and WebSocket messages) per device (20).
    pub signals_per_sec: u32,
    /// `RATE_LIMIT_SIGNALS_BURST`: burst above that, for trickle-ICE set-ups (200).
    pub signals_burst: u32,
    /// `RATE_LIMIT_BACKUPS_PER_HOUR`: backup uploads per device per hour (30).
    pub backups_per_hour: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: 0,
            pairing_per_15min: 100,
            confirm_per_15min: 20,
            signals_per_sec: 20,
            signals_burst: 200,
            backups_per_hour: 30,
        }
    }
}

/// Every rate limit, by the name its metric label and the docs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Pairing requests per client IP.
    Pairing,
    /// Confirm attempts per client IP (on top of [`Limit::Pairing`]).
    Confirm,
    /// Signals (REST) and WebSocket messages per device.
    Signals,
    /// Backup uploads per device.
    Backups,
}

impl Limit {
    /// Every limit, for metrics that start each label at zero.
    pub const ALL: [Self; 4] = [Self::Pairing, Self::Confirm, Self::Signals, Self::Backups];

    /// The `limit` label of `our_memories_rate_limited_total`.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Pairing => "pairing",
            Self::Confirm => "confirm",
            Self::Signals => "signals",
            Self::Backups => "backups",
        }
    }
}

/// Where pairings, devices, mailboxes and backup metadata live.
#[derive(Debug, Clone)]
pub enum MetadataBackend {
    /// redb in `DATA_DIR` (nothing set).
    Embedded,
    /// `MONGODB_URI` (and optionally `MONGODB_DB`).
    Mongo {
        /// The connection string (may hold a password).
        uri: Secret,
        /// Database name override.
        database: Option<String>,
    },
}

/// Where backup ciphertext lives.
#[derive(Debug, Clone)]
pub enum BlobBackend {
    /// Beside the metadata: files in `DATA_DIR`, or GridFS with MongoDB.
    Default,
    /// `S3_BUCKET` and the `AWS_*` credentials.
    S3(S3Settings),
}

/// The storage selection, from the environment.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Metadata backend.
    pub metadata: MetadataBackend,
    /// Blob backend.
    pub blobs: BlobBackend,
    /// Bound on each storage operation.
    pub timeout: Duration,
}

/// The ICE servers handed to paired devices (`GET /api/ice-servers`).
#[derive(Debug, Clone)]
pub struct IceConfig {
    /// `STUN_URLS`: `stun:`/`stuns:` URLs, given as they are.
    pub stun_urls: Vec<String>,
    /// `TURN_URLS` + `TURN_SECRET`: TURN servers that check credentials with the TURN REST
    /// scheme (coturn's `use-auth-secret`).
    pub turn: Option<TurnConfig>,
    /// `TURN_TTL_SECS`: how long a credential (and so the answer) is valid; default one day.
    pub ttl: Duration,
}

/// TURN servers and how their ephemeral credentials are made.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// `TURN_URLS`: `turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// `TURN_SECRET`: the TURN server's `static-auth-secret`.
    pub secret: Secret,
}

/// Default `TURN_TTL_SECS`: one day, as the TURN REST draft suggests.
const DEFAULT_TURN_TTL: Duration = Duration::from_hours(24);
/// Bounds of `TURN_TTL_SECS`: a credential shorter than a minute would expire during ICE, and
/// one longer than a week outlives any call it was fetched for.
const TURN_TTL_BOUNDS: (u64, u64) = (60, 7 * 24 * 3600);
/// Shortest `TURN_SECRET`: it signs every credential.
const MIN_TURN_SECRET_BYTES: usize = 16;

/// Cluster mode (`REDIS_URL`): many instances share rooms through Redis.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `REDIS_URL` (`redis://[user:password@]host:port[/db]`; may hold a password).
    pub url: Secret,
    /// `REDIS_KEY_PREFIX` (default `om`): every key and channel starts with it, so
    /// deployments can share one Redis.
    pub prefix: String,
    /// `INSTANCE_ID` (default: random): names this instance's sockets and lease.
    pub instance: String,
}

/// Development or production; production refuses insecure defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local use: a signing secret is generated and kept in `DATA_DIR`.
    Development,
    /// `NODE_ENV=production`: `SIGNALING_SECRET` is required.
    Production,
}

/// Most reverse proxies `TRUST_PROXY` may name: more is a configuration mistake.
pub const MAX_TRUSTED_PROXIES: usize = 10;

/// Where the signing secret comes from.
#[derive(Clone)]
pub enum SecretSource {
    /// `SIGNALING_SECRET`.
    Env(actors::SigningSecret),
    /// Generated once and kept in `DATA_DIR` (development only).
    DataDir,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(_) => f.write_str("Env(<redacted>)"),
            Self::DataDir => f.write_str("DataDir"),
        }
    }
}

/// Shortest `METRICS_TOKEN` accepted: a bearer token must not be guessable.
pub const MIN_METRICS_TOKEN_LEN: usize = 16;

/// Who may read `GET /metrics`, and on which listener.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// `METRICS_TOKEN`: when set, a scrape must send `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// `METRICS_ADDR`: when set, `/metrics` is served only on this listener, not on `PORT`.
    pub addr: Option<SocketAddr>,
}

/// WebSocket session limits.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Ping period while another device of the couple is connected.
    pub heartbeat: Duration,
    /// Ping period while the socket is alone in its room (or not joined).
    pub alone_heartbeat: Duration,
    /// Silence before the socket is closed, while another device is connected; alone, the
    /// limit is `alone_heartbeat + client_timeout`.
    pub client_timeout: Duration,
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// Bounded outbound queue per socket.
    pub outbound_queue: usize,
    /// An upgraded socket must join a couple within this (again after each `leave-couple`),
    /// so unjoined sockets cannot pile up.
    pub join_timeout: Duration,
}

/// Limits on connections, and on how long a client may hold one without progress.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// `MAX_CONNECTIONS`: connections on `PORT` served in full (HTTP and WebSocket). The
    /// server lowers it at start to stay [`FD_RESERVE`] below the file-descriptor limit.
    pub max: usize,
    /// `MAX_CONNECTIONS_PER_IP`: connections served in full from one TCP peer address. Not
    /// applied with `TRUST_PROXY` (every connection then comes from the proxy).
    pub per_ip: usize,
    /// `BODY_TIMEOUT_SECS`: longest time to receive a JSON request body.
    pub body_timeout: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            max: DEFAULT_MAX_CONNECTIONS,
            per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// The whole server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Development or production.
    pub environment: Environment,
    /// Listen address (`HOST`:`PORT`); port 0 picks a free one (tests).
    pub addr: SocketAddr,
    /// Embedded store and development secret live here.
    pub data_dir: PathBuf,
    /// Device-token signing key.
    pub secret: SecretSource,
    /// Storage backends.
    pub storage: StorageConfig,
    /// `ALLOWED_ORIGINS`: browser origins for CORS and WebSocket upgrades.
    pub allowed_origins: AllowedOrigins,
    /// Rate limits.
    pub rate: RateConfig,
    /// Domain TTLs and bounds.
    pub settings: Settings,
    /// Socket limits.
    pub ws: WsConfig,
    /// Connection caps and the body deadline.
    pub conn: ConnConfig,
    /// Longest graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Access to `/metrics`.
    pub metrics: MetricsConfig,
    /// Cluster mode, when `REDIS_URL` is set.
    pub cluster: Option<ClusterConfig>,
    /// STUN and TURN servers for `GET /api/ice-servers`.
    pub ice: IceConfig,
    /// `DEMO`: serve the demo page at `/demo/` (default: on in development, off in
    /// production).
    pub demo: bool,
}

/// A variable that is missing or wrong. Names the variable, so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("{var}: invalid value {value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What was given.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// Two variables whose values do not fit together; both are named, since either may be
    /// the one to change.
    #[error("{first} and {second} do not fit together: {reason}")]
    Conflict {
        /// One variable.
        first: &'static str,
        /// The other.
        second: &'static str,
        /// How they must relate, with both values.
        reason: String,
    },
    /// A variable required in this environment.
    #[error("{var} is required when {because}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// Why it is required.
        because: &'static str,
    },
}

/// Reads variables through `get`, so tests need not touch the process environment.
struct Vars<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn parse<T: FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                var,
                value: v,
                reason: e.to_string(),
            }),
        }
    }

    fn positive<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialEq + Default,
        T::Err: std::fmt::Display,
    {
        let v = self.parse(var, default)?;
        if v == T::default() {
            return Err(ConfigError::Invalid {
                var,
                value: "0".to_owned(),
                reason: "must be greater than zero".to_owned(),
            });
        }
        Ok(v)
    }

    fn secs(&self, var: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.positive(var, default.as_secs())?))
    }

    /// `on`/`true`/`1` or `off`/`false`/`0`.
    fn switch(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).as_deref().map(str::trim) {
            None => Ok(default),
            Some("on" | "true" | "1") => Ok(true),
            Some("off" | "false" | "0") => Ok(false),
            Some(other) => Err(ConfigError::Invalid {
                var,
                value: other.to_owned(),
                reason: "expected on or off".to_owned(),
            }),
        }
    }
}

/// A name that goes into Redis keys or socket owners: 1 to 64 of `A-Z a-z 0-9 _ -`.
fn key_part(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim().to_owned();
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            var,
            value,
            reason: "expected 1 to 64 of A-Z a-z 0-9 _ -".to_owned(),
        })
    }
}

/// A comma-separated list of URLs that must each start with one of `schemes`.
fn url_list<F: Fn(&str) -> Option<String>>(
    v: &Vars<F>,
    var: &'static str,
    schemes: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = v
        .get(var)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    match urls
        .iter()
        .find(|u| !schemes.iter().any(|s| u.starts_with(s)))
    {
        Some(bad) => Err(ConfigError::Invalid {
            var,
            value: bad.clone(),
            reason: format!("each URL must start with {}", schemes.join(" or ")),
        }),
        None => Ok(urls),
    }
}

/// Reads `STUN_URLS`, `TURN_URLS`, `TURN_SECRET` and `TURN_TTL_SECS`.
fn ice<F: Fn(&str) -> Option<String>>(v: &Vars<F>) -> Result<IceConfig, ConfigError> {
    let stun_urls = url_list(v, "STUN_URLS", &["stun:", "stuns:"])?;
    let turn_urls = url_list(v, "TURN_URLS", &["turn:", "turns:"])?;
    let secret = v.get("TURN_SECRET").map(|s| s.trim().to_owned());
    let ttl = v.parse("TURN_TTL_SECS", DEFAULT_TURN_TTL.as_secs())?;
    let (min, max) = TURN_TTL_BOUNDS;
    if !(min..=max).contains(&ttl) {
        return Err(ConfigError::Invalid {
            var: "TURN_TTL_SECS",
            value: ttl.to_string(),
            reason: format!("must be between {min} and {max} seconds"),
        });
    }
    let turn = match (turn_urls.is_empty(), secret) {
        (true, None) => None,
        (false, None) => {
            return Err(ConfigError::Missing {
                var: "TURN_SECRET",
                because: "TURN_URLS is set (the TURN server's static-auth-secret signs the credentials)",
            });
        }
        (true, Some(_)) => {
            return Err(ConfigError::Missing {
                var: "TURN_URLS",
                because: "TURN_SECRET is set",
            });
        }
        (false, Some(secret)) => {
            if secret.len() < MIN_TURN_SECRET_BYTES {
                return Err(ConfigError::Invalid {
                    var: "TURN_SECRET",
                    value: "<redacted>".to_owned(),
                    reason: format!("must be at least {MIN_TURN_SECRET_BYTES} bytes"),
                });
            }
            Some(TurnConfig {
                urls: turn_urls,
                secret: Secret(secret),
            })
        }
    };
    Ok(IceConfig {
        stun_urls,
        turn,
        ttl: Duration::from_secs(ttl),
    })
}

/// Reads `REDIS_URL`, `REDIS_KEY_PREFIX` and `INSTANCE_ID`.
fn cluster<F: Fn(&str) -> Option<String>>(
    v: &Vars<F>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(url) = v.get("REDIS_URL") else {
        return Ok(None);
    };
    let url = url.trim().to_owned();
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
        return Err(ConfigError::Invalid {
            var: "REDIS_URL",
            value: "<redacted>".to_owned(),
            reason: "must start with redis:// or redis+unix:// (TLS is not built in)".to_owned(),
        });
    }
    Ok(Some(ClusterConfig {
        url: Secret(url),
        prefix: key_part(
            "REDIS_KEY_PREFIX",
            &v.get("REDIS_KEY_PREFIX").unwrap_or_else(|| "om".to_owned()),
        )?,
        instance: match v.get("INSTANCE_ID") {
            Some(id) => key_part("INSTANCE_ID", &id)?,
            None => actors::SignalId::generate().as_str().to_owned(),
        },
    }))
}

/// Reads the storage variables: `MONGODB_URI` selects MongoDB for metadata (and GridFS for
/// blobs), `S3_BUCKET` selects S3 for blobs.
fn storage<F: Fn(&str) -> Option<String>>(v: &Vars<F>) -> Result<StorageConfig, ConfigError> {
    let metadata = match v.get("MONGODB_URI") {
        None => MetadataBackend::Embedded,
        Some(uri) => {
            let uri = uri.trim().to_owned();
            if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
                return Err(ConfigError::Invalid {
                    var: "MONGODB_URI",
                    value: "<redacted>".to_owned(),
                    reason: "must start with mongodb:// or mongodb+srv://".to_owned(),
                });
            }
            MetadataBackend::Mongo {
                uri: Secret(uri),
                database: v.get("MONGODB_DB").map(|d| d.trim().to_owned()),
            }
        }
    };
    let blobs = match v.get("S3_BUCKET") {
        None => BlobBackend::Default,
        Some(bucket) => {
            let required = |var: &'static str| {
                v.get(var)
                    .map(|s| s.trim().to_owned())
                    .ok_or(ConfigError::Missing {
                        var,
                        because: "S3_BUCKET is set",
                    })
            };
            BlobBackend::S3(S3Settings {
                bucket: bucket.trim().to_owned(),
                region: v
                    .get("AWS_REGION")
                    .map_or_else(|| "us-east-1".to_owned(), |r| r.trim().to_owned()),
                access_key: required("AWS_ACCESS_KEY_ID")?,
                secret_key: required("AWS_SECRET_ACCESS_KEY")?,
                session_token: v.get("AWS_SESSION_TOKEN").map(|s| s.trim().to_owned()),
                endpoint: v.get("S3_ENDPOINT").map(|s| s.trim().to_owned()),
            })
        }
    };
    Ok(StorageConfig {
        metadata,
        blobs,
        timeout: v.secs("STORAGE_TIMEOUT_SECS", DEFAULT_STORAGE_TIMEOUT)?,
    })
}

/// Reads `RATE_LIMIT`, `TRUST_PROXY` and the `RATE_LIMIT_*` sizes.
fn rate<F: Fn(&str) -> Option<String>>(v: &Vars<F>) -> Result<RateConfig, ConfigError> {
    let d = RateConfig::default();
    Ok(RateConfig {
        enabled: v.switch("RATE_LIMIT", d.enabled)?,
        trusted_proxies: match v.get("TRUST_PROXY").as_deref().map(str::trim) {
            None => d.trusted_proxies,
            Some("off" | "false") => 0,
            Some("on" | "true") => 1,
            Some(n) => n.parse().ok().filter(|&n| n <= MAX_TRUSTED_PROXIES).ok_or_else(|| {
                ConfigError::Invalid {
                    var: "TRUST_PROXY",
                    value: n.to_owned(),
                    reason: format!(
                        "expected off, on (one proxy) or the number of proxies, 0 to {MAX_TRUSTED_PROXIES}"
                    ),
                }
            })?,
        },
        pairing_per_15min: v.positive("RATE_LIMIT_PAIRING_PER_15MIN", d.pairing_per_15min)?,
        confirm_per_15min: v.positive("RATE_LIMIT_CONFIRM_PER_15MIN", d.confirm_per_15min)?,
        signals_per_sec: v.positive("RATE_LIMIT_SIGNALS_PER_SEC", d.signals_per_sec)?,
        signals_burst: v.positive("RATE_LIMIT_SIGNALS_BURST", d.signals_burst)?,
        backups_per_hour: v.positive("RATE_LIMIT_BACKUPS_PER_HOUR", d.backups_per_hour)?,
    })
}

/// Reads `HOST` and `PORT`.
fn listen_addr<F: Fn(&str) -> Option<String>>(v: &Vars<F>) -> Result<SocketAddr, ConfigError> {
    let host: IpAddr = v.parse("HOST", IpAddr::from([0, 0, 0, 0]))?;
    let port: u16 = v.parse("PORT", DEFAULT_PORT)?;
    Ok(SocketAddr::new(host, port))
}

/// Reads `METRICS_TOKEN` and `METRICS_ADDR`.
fn metrics<F: Fn(&str) -> Option<String>>(v: &Vars<F>) -> Result<MetricsConfig, ConfigError> {
    let token = match v.get("METRICS_TOKEN").map(|t| t.trim().to_owned()) {
        Some(t) if t.len() < MIN_METRICS_TOKEN_LEN || t.contains(char::is_whitespace) => {
            return Err(ConfigError::Invalid {
                var: "METRICS_TOKEN",
                value: "<redacted>".to_owned(),
                reason: format!(
                    "must be at least {MIN_METRICS_TOKEN_LEN} characters, without spaces"
                ),
            });
        }
        t => t.map(Secret),
    };
    let addr =
        match v.get("METRICS_ADDR") {
            None => None,
            Some(a) => Some(a.trim().parse().map_err(|e: std::net::AddrParseError| {
                ConfigError::Invalid {
                    var: "METRICS_ADDR",
                    value: a.clone(),
                    reason: format!("{e} (expected HOST:PORT, e.g. 127.0.0.1:9464)"),
                }
            })?),
        };
    Ok(MetricsConfig { token, addr })
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Only the listen address (`HOST`, `PORT`), for the health probe, which must not
    /// depend on the rest of the configuration.
    pub fn listen_addr_from_env() -> Result<SocketAddr, ConfigError> {
        listen_addr(&Vars(|k: &str| std::env::var(k).ok()))
    }

    /// Reads variables through `get` (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars(get);
        let environment = match v.get("NODE_ENV").as_deref().map(str::trim) {
            Some("production") => Environment::Production,
            None | Some("development" | "test") => Environment::Development,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "NODE_ENV",
                    value: other.to_owned(),
                    reason: "expected development, test or production".to_owned(),
                });
            }
        };
        let storage = storage(&v)?;
        let secret = match (v.get("SIGNALING_SECRET"), environment) {
            (Some(s), _) => SecretSource::Env(
                actors::SigningSecret::new(s.trim().as_bytes().to_vec()).map_err(|e| {
                    ConfigError::Invalid {
                        var: "SIGNALING_SECRET",
                        value: "<redacted>".to_owned(),
                        reason: e.to_string(),
                    }
                })?,
            ),
            (None, Environment::Production) => {
                return Err(ConfigError::Missing {
                    var: "SIGNALING_SECRET",
                    because: "NODE_ENV=production (generate one with `openssl rand -base64 48`)",
                });
            }
            (None, Environment::Development) => SecretSource::DataDir,
        };
        let d = Settings::default();
        let settings = Settings {
            signal_ttl: v.secs("SIGNAL_TTL_SECS", d.signal_ttl)?,
            dedupe_window: v.secs("SIGNAL_TTL_SECS", d.dedupe_window)?,
            pairing_ttl: v.secs("PAIRING_TTL_SECS", d.pairing_ttl)?,
            pairing_max_attempts: v.positive("PAIRING_MAX_ATTEMPTS", d.pairing_max_attempts)?,
            max_devices_per_couple: v.parse("MAX_DEVICES_PER_COUPLE", d.max_devices_per_couple)?,
            mailbox: MailboxLimits {
                max_signals: v.positive("MAILBOX_MAX_SIGNALS", d.mailbox.max_signals)?,
                max_bytes: v.positive("MAILBOX_MAX_BYTES", d.mailbox.max_bytes)?,
            },
            max_payload_bytes: d.max_payload_bytes,
            room_tick: d.room_tick,
            room_idle_after: v.secs("ROOM_IDLE_SECS", d.room_idle_after)?,
            call_timeout: d.call_timeout,
            backup_max_bytes: v.positive("BACKUP_MAX_BYTES", d.backup_max_bytes)?,
            backup_retention: v.positive("BACKUP_RETENTION", d.backup_retention)?,
            backup_idle_timeout: v.secs("BACKUP_IDLE_TIMEOUT_SECS", d.backup_idle_timeout)?,
            backup_upload_timeout: v.secs("BACKUP_UPLOAD_TIMEOUT_SECS", d.backup_upload_timeout)?,
            backup_max_concurrent: v.positive("BACKUP_MAX_CONCURRENT", d.backup_max_concurrent)?,
            backup_quota: 0,
            upload_ttl: v.secs("BACKUP_UPLOAD_TTL_SECS", d.upload_ttl)?,
            upload_max_parts: d.upload_max_parts,
        };
        // Four backups' worth by default, whatever the size limit.
        let settings = Settings {
            backup_quota: v.positive(
                "BACKUP_QUOTA_BYTES",
                settings.backup_max_bytes.saturating_mul(4),
            )?,
            ..settings
        };
        let config = Config {
            environment,
            addr: listen_addr(&v)?,
            data_dir: PathBuf::from(
                v.get("DATA_DIR")
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned()),
            ),
            secret,
            storage,
            allowed_origins: AllowedOrigins::parse(&v.get("ALLOWED_ORIGINS").unwrap_or_default()),
            rate: rate(&v)?,
            settings,
            ws: WsConfig {
                heartbeat: v.secs("WS_HEARTBEAT_SECS", DEFAULT_WS_HEARTBEAT)?,
                alone_heartbeat: v.secs("WS_ALONE_HEARTBEAT_SECS", DEFAULT_WS_ALONE_HEARTBEAT)?,
                client_timeout: v.secs("WS_CLIENT_TIMEOUT_SECS", DEFAULT_WS_CLIENT_TIMEOUT)?,
                max_message_bytes: v
                    .positive("WS_MAX_MESSAGE_BYTES", DEFAULT_WS_MAX_MESSAGE_BYTES)?,
                outbound_queue: v.positive("WS_OUTBOUND_QUEUE", DEFAULT_WS_OUTBOUND_QUEUE)?,
                join_timeout: v.secs("WS_JOIN_TIMEOUT_SECS", DEFAULT_WS_JOIN_TIMEOUT)?,
            },
            conn: ConnConfig {
                max: v.positive("MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)?,
                per_ip: v.positive("MAX_CONNECTIONS_PER_IP", DEFAULT_MAX_CONNECTIONS_PER_IP)?,
                body_timeout: v.secs("BODY_TIMEOUT_SECS", DEFAULT_BODY_TIMEOUT)?,
            },
            shutdown_timeout: v.secs("SHUTDOWN_TIMEOUT_SECS", DEFAULT_SHUTDOWN_TIMEOUT)?,
            metrics: metrics(&v)?,
            cluster: cluster(&v)?,
            ice: ice(&v)?,
            demo: v.switch("DEMO", environment == Environment::Development)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks, all in one place.
    ///
    /// (Checks of a single variable happen where it is read.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |var: &'static str, value: String, reason: &str| ConfigError::Invalid {
            var,
            value,
            reason: reason.to_owned(),
        };
        if self.cluster.is_some() && matches!(self.storage.metadata, MetadataBackend::Embedded) {
            return Err(ConfigError::Missing {
                var: "MONGODB_URI",
                because: "REDIS_URL is set: cluster mode keeps devices, pairings and seq epochs in MongoDB, shared by every instance (the embedded store is one process's)",
            });
        }
        if self.cluster.is_some() && matches!(self.secret, SecretSource::DataDir) {
            return Err(ConfigError::Missing {
                var: "SIGNALING_SECRET",
                because: "REDIS_URL is set: every instance must check the device tokens the others issued, so all need the same secret (a generated one is per DATA_DIR)",
            });
        }
        if self.settings.max_devices_per_couple < 2 {
            return Err(invalid(
                "MAX_DEVICES_PER_COUPLE",
                self.settings.max_devices_per_couple.to_string(),
                "a couple needs at least 2 devices",
            ));
        }
        if self.ws.outbound_queue <= self.settings.mailbox.max_signals {
            return Err(invalid(
                "WS_OUTBOUND_QUEUE",
                self.ws.outbound_queue.to_string(),
                "must exceed MAILBOX_MAX_SIGNALS so a full backlog fits on a fresh socket",
            ));
        }
        if self.settings.signal_ttl > MAX_SIGNAL_TTL {
            return Err(invalid(
                "SIGNAL_TTL_SECS",
                self.settings.signal_ttl.as_secs().to_string(),
                "must be at most 3600 (acknowledgements are kept one hour)",
            ));
        }
        if self.settings.backup_upload_timeout >= actors::ORPHAN_AGE {
            return Err(invalid(
                "BACKUP_UPLOAD_TIMEOUT_SECS",
                self.settings.backup_upload_timeout.as_secs().to_string(),
                "must be under 3600 (unfinished uploads older than an hour are cleaned up)",
            ));
        }
        if self.settings.backup_quota < self.settings.backup_max_bytes {
            return Err(ConfigError::Conflict {
                first: "BACKUP_QUOTA_BYTES",
                second: "BACKUP_MAX_BYTES",
                reason: format!(
                    "the quota ({}) must hold at least one backup of the largest size ({})",
                    self.settings.backup_quota, self.settings.backup_max_bytes
                ),
            });
        }
        if self.ws.client_timeout <= self.ws.heartbeat {
            return Err(ConfigError::Conflict {
                first: "WS_HEARTBEAT_SECS",
                second: "WS_CLIENT_TIMEOUT_SECS",
                reason: format!(
                    "the heartbeat ({} s) must be shorter than the client timeout ({} s)",
                    self.ws.heartbeat.as_secs(),
                    self.ws.client_timeout.as_secs()
                ),
            });
        }
        if self.ws.alone_heartbeat < self.ws.heartbeat {
            return Err(ConfigError::Conflict {
                first: "WS_ALONE_HEARTBEAT_SECS",
                second: "WS_HEARTBEAT_SECS",
                reason: format!(
                    "a socket alone in its room ({} s) is pinged no more often than one with a peer ({} s)",
                    self.ws.alone_heartbeat.as_secs(),
                    self.ws.heartbeat.as_secs()
                ),
            });
        }
        if self.ws.max_message_bytes <= self.settings.max_payload_bytes {
            return Err(invalid(
                "WS_MAX_MESSAGE_BYTES",
                self.ws.max_message_bytes.to_string(),
                "must exceed the 64 KiB payload limit",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn origins_match_exactly_and_requests_without_origin_pass() {
        let o = AllowedOrigins::parse("https://app.example, http://localhost:5173/ ,");
        let host = Some("api.example:3000");
        assert!(o.permits(None, host));
        assert!(o.permits(Some("https://app.example"), host));
        assert!(o.permits(Some("http://localhost:5173"), None));
        assert!(!o.permits(Some("https://evil.example"), host));
        assert!(!o.permits(Some("https://app.example.evil"), host));
        assert!(!AllowedOrigins::default().permits(Some("https://app.example"), host));
        // The server's own pages: the origin names the Host the request was sent to.
        let none = AllowedOrigins::default();
        assert!(none.permits(Some("http://api.example:3000"), host));
        assert!(none.permits(Some("https://API.example:3000"), host));
        assert!(!none.permits(Some("http://api.example"), host));
        assert!(!none.permits(Some("http://api.example:3000"), None));
        assert!(!none.permits(Some("null"), Some("null")));
    }

    #[test]
    fn no_variables_at_all_gives_a_working_development_config() {
        let c = from(&[]).unwrap();
        assert_eq!(c.environment, Environment::Development);
        assert_eq!(c.addr.port(), 3000);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(matches!(c.secret, SecretSource::DataDir));
        assert_eq!(c.settings.max_devices_per_couple, 8);
    }

    #[test]
    fn production_requires_a_signing_secret_and_says_so() {
        let err = from(&[("NODE_ENV", "production")]).unwrap_err().to_string();
        assert!(err.contains("SIGNALING_SECRET"), "{err}");
        let ok = from(&[
            ("NODE_ENV", "production"),
            ("SIGNALING_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap();
        assert!(matches!(ok.secret, SecretSource::Env(_)));
        assert!(!format!("{ok:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn the_backup_quota_follows_the_size_limit_and_must_hold_one_backup() {
        let c = from(&[("BACKUP_MAX_BYTES", "1000")]).unwrap();
        assert_eq!(c.settings.backup_quota, 4000);
        assert_eq!(c.settings.upload_ttl, Duration::from_hours(24));
        let c = from(&[
            ("BACKUP_MAX_BYTES", "1000"),
            ("BACKUP_QUOTA_BYTES", "5000"),
            ("BACKUP_UPLOAD_TTL_SECS", "60"),
        ])
        .unwrap();
        assert_eq!(c.settings.backup_quota, 5000);
        assert_eq!(c.settings.upload_ttl, Duration::from_mins(1));
        let err = from(&[("BACKUP_MAX_BYTES", "1000"), ("BACKUP_QUOTA_BYTES", "999")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BACKUP_QUOTA_BYTES") && err.contains("BACKUP_MAX_BYTES"),
            "{err}"
        );
    }

    #[test]
    fn the_demo_is_on_in_development_and_off_in_production_unless_asked_for() {
        let prod = ("SIGNALING_SECRET", "0123456789abcdef0123456789abcdef");
        assert!(from(&[]).unwrap().demo);
        assert!(!from(&[("DEMO", "off")]).unwrap().demo);
        assert!(!from(&[("NODE_ENV", "production"), prod]).unwrap().demo);
        assert!(
            from(&[("NODE_ENV", "production"), prod, ("DEMO", "on")])
                .unwrap()
                .demo
        );
        let err = from(&[("DEMO", "maybe")]).unwrap_err().to_string();
        assert!(err.contains("DEMO") && err.contains("on or off"), "{err}");
    }

    #[test]
    fn turn_needs_urls_and_a_secret_together() {
        let c = from(&[("STUN_URLS", "stun:stun.example:3478, stuns:s.example")]).unwrap();
        assert_eq!(
            c.ice.stun_urls,
            ["stun:stun.example:3478", "stuns:s.example"]
        );
        assert!(c.ice.turn.is_none());
        let secret = ("TURN_SECRET", "a-turn-secret-of-some-length");
        let urls = (
            "TURN_URLS",
            "turn:t.example:3478?transport=udp,turns:t.example:5349",
        );
        let ice = from(&[urls, secret]).unwrap().ice;
        let turn = ice.turn.expect("turn");
        assert_eq!((turn.urls.len(), ice.ttl.as_secs()), (2, 86_400));
        assert!(!format!("{turn:?}").contains("some-length"));
        for (vars, named) in [
            (vec![urls], "TURN_SECRET"),
            (vec![secret], "TURN_URLS"),
            (vec![("TURN_URLS", "http://t"), secret], "TURN_URLS"),
            (vec![("STUN_URLS", "turn:t")], "STUN_URLS"),
            (vec![urls, ("TURN_SECRET", "short")], "TURN_SECRET"),
            (vec![urls, secret, ("TURN_TTL_SECS", "30")], "TURN_TTL_SECS"),
            (
                vec![urls, secret, ("TURN_TTL_SECS", "9999999")],
                "TURN_TTL_SECS",
            ),
        ] {
            let err = from(&vars).unwrap_err().to_string();
            assert!(err.contains(named), "{vars:?}: {err}");
        }
    }

    #[test]
    fn cluster_mode_needs_mongodb_and_key_safe_names() {
        assert!(from(&[]).unwrap().cluster.is_none());
        let err = from(&[("REDIS_URL", "redis://r:6379")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MONGODB_URI") && err.contains("REDIS_URL"),
            "{err}"
        );
        let mongo = ("MONGODB_URI", "mongodb://m/db");
        let err = from(&[mongo, ("REDIS_URL", "redis://r")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SIGNALING_SECRET"), "{err}");
        let secret = ("SIGNALING_SECRET", "0123456789abcdef0123456789abcdef");
        let c = from(&[mongo, secret, ("REDIS_URL", "redis://:pw@r:6379/2")]).unwrap();
        let cluster = c.cluster.expect("cluster mode");
        assert_eq!(cluster.prefix, "om");
        assert!(!cluster.instance.is_empty());
        assert!(!format!("{cluster:?}").contains("pw"));
        for bad in [
            ("REDIS_URL", "rediss://r"),
            ("REDIS_URL", "http://r"),
            ("REDIS_KEY_PREFIX", "a:b"),
            ("INSTANCE_ID", "i.1"),
        ] {
            let mut vars = vec![mongo, secret, ("REDIS_URL", "redis://r")];
            vars.push(bad);
            let err = from(&vars).unwrap_err().to_string();
            assert!(err.contains(bad.0), "{bad:?}: {err}");
        }
    }

    #[test]
    fn storage_is_selected_by_environment() {
        let c = from(&[]).unwrap();
        assert!(matches!(c.storage.metadata, MetadataBackend::Embedded));
        assert!(matches!(c.storage.blobs, BlobBackend::Default));
        let c = from(&[
            ("MONGODB_URI", "mongodb://u:pw@localhost/db"),
            ("S3_BUCKET", "backups"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("S3_ENDPOINT", "http://127.0.0.1:9000"),
        ])
        .unwrap();
        assert!(matches!(c.storage.metadata, MetadataBackend::Mongo { .. }));
        let BlobBackend::S3(s3) = &c.storage.blobs else {
            panic!("S3 expected")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("backups", "us-east-1")
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw") && !shown.contains("\"s\""), "{shown}");
        let err = from(&[("S3_BUCKET", "b"), ("AWS_ACCESS_KEY_ID", "k")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    #[test]
    fn a_heartbeat_that_does_not_fit_the_timeout_names_both_variables() {
        let err = from(&[("WS_HEARTBEAT_SECS", "8")]).unwrap_err().to_string();
        assert!(
            err.starts_with("WS_HEARTBEAT_SECS and WS_CLIENT_TIMEOUT_SECS"),
            "{err}"
        );
        assert!(err.contains("heartbeat (8 s)"), "{err}");
    }

    #[test]
    fn trust_proxy_counts_proxies() {
        for (value, hops) in [("off", 0), ("on", 1), ("true", 1), ("2", 2), ("0", 0)] {
            let c = from(&[("TRUST_PROXY", value)]).unwrap();
            assert_eq!(c.rate.trusted_proxies, hops, "{value}");
        }
        for bad in ["11", "-1", "yes please"] {
            let err = from(&[("TRUST_PROXY", bad)]).unwrap_err().to_string();
            assert!(err.starts_with("TRUST_PROXY"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_variable() {
        for (var, value) in [
            ("PORT", "eighty"),
            ("MAX_DEVICES_PER_COUPLE", "1"),
            ("MAILBOX_MAX_SIGNALS", "0"),
            ("SIGNALING_SECRET", "short"),
            ("NODE_ENV", "staging"),
            ("WS_OUTBOUND_QUEUE", "10"),
            ("WS_MAX_MESSAGE_BYTES", "1024"),
            ("MONGODB_URI", "postgres://localhost"),
            ("STORAGE_TIMEOUT_SECS", "0"),
            ("SIGNAL_TTL_SECS", "3601"),
            ("BACKUP_UPLOAD_TIMEOUT_SECS", "3600"),
            ("BACKUP_MAX_CONCURRENT", "0"),
            ("RATE_LIMIT", "maybe"),
            ("TRUST_PROXY", "yes please"),
            ("RATE_LIMIT_SIGNALS_BURST", "0"),
        ] {
            let err = from(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(var), "{var}: {err}");
        }
    }
}
