//! Cluster mode's [`Bus`] on Redis (`REDIS_URL`): every couple's signaling state in keys
//! that share the hash tag `{couple}`, changed only by the Lua scripts in `cluster/lua/`,
//! each of which also publishes its change on the couple's channel (so the channel's order
//! is the seq order, as in centrifuge's Redis broker).
//!
//! Keys, with `P` = `REDIS_KEY_PREFIX` and `c` the couple id:
//! - `P:{c}:m`: hash; epoch, counter, the Redis `run_id` the epoch was taken under, paired
//!   devices, and per device its waiting bytes, delivered and evicted marks;
//! - `P:{c}:s:<device>`: stream; the device's mailbox, one entry per signal with id `<seq>-0`;
//! - `P:{c}:p`: hash; device → the socket that holds it (`<instance>.<connection>`);
//! - `P:{c}:id:<from>:<id>`: string with a TTL of the resend window; the seq an id got;
//! - `P:{c}:lk`: the couple's lock (pairing confirms and revocations, across instances);
//! - `P:{c}:ch`: the couple's pub/sub channel;
//! - `P:{n}:live`: sorted set; instance → lease expiry, by the Redis server's clock.
//!
//! The epoch check: each connection reads the server's `run_id` once, when it opens, and
//! every append passes it. A couple whose epoch was taken under another `run_id` (Redis
//! restarted, perhaps from an older append-only file) gets a new epoch from MongoDB before
//! its next signal, so seq numbers never repeat. Every operation is timed as the storage
//! backend `redis` (`our_memories_storage_operation_*`).

mod pubsub;
mod wire;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actors::cluster::{Append, Appended, Bus, BusError, BusSink, JoinState};
use actors::store::DeviceRecord;
use actors::{CoupleId, DeviceId, DomainMetrics, Seq, Settings, Signal, StoreError, Timestamp};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tokio::task::JoinHandle;

use self::pubsub::Subscriptions;
use self::wire::{count, entries, int, presence, text};

/// An instance's lease on the bus; renewed every [`LEASE_RENEW`]. An instance that misses
/// three renewals is taken for dead and its sockets' presence is removed by the others.
const LEASE: Duration = Duration::from_secs(3);
/// How often the lease is renewed (and the live instances read).
const LEASE_RENEW: Duration = Duration::from_secs(1);
/// A couple's lock frees itself after this if its holder died (its work is a few storage
/// calls, each bounded by the storage timeout).
const LOCK_HELD_AT_MOST: Duration = Duration::from_secs(15);
/// How long a couple's keys outlive their last write: they are garbage once every signal
/// expired and no socket is connected (the scripts go by the domain's clock; this only
/// frees memory).
const KEEP_AFTER: Duration = Duration::from_hours(2);

/// The scripts, each with the shared prelude.
struct Scripts {
    append: Script,
    join: Script,
    leave: Script,
    fetch: Script,
    ack: Script,
    seed: Script,
    revoke: Script,
    lease: Script,
    unlock: Script,
    sweep: Script,
    touch: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("cluster/lua/common.lua"),
            include_str!(concat!("cluster/lua/", $file))
        ))
    };
}

impl Scripts {
    fn all(&self) -> [&Script; 11] {
        [
            &self.append,
            &self.join,
            &self.leave,
            &self.fetch,
            &self.ack,
            &self.seed,
            &self.revoke,
            &self.lease,
            &self.unlock,
            &self.sweep,
            &self.touch,
        ]
    }

    fn load() -> Self {
        Self {
            append: script!("append.lua"),
            join: script!("join.lua"),
            leave: script!("leave.lua"),
            fetch: script!("fetch.lua"),
            ack: script!("ack.lua"),
            seed: script!("seed.lua"),
            revoke: script!("revoke.lua"),
            lease: script!("lease.lua"),
            unlock: script!("unlock.lua"),
            sweep: script!("sweep.lua"),
            touch: script!("touch.lua"),
        }
    }
}

/// One command connection and the `run_id` of the server it is connected to.
#[derive(Clone)]
struct Link {
    conn: MultiplexedConnection,
    run_id: String,
}

/// The Redis bus of one instance. Its lease and subscription tasks stop when it is dropped.
pub struct RedisBus {
    client: Client,
    config: AsyncConnectionConfig,
    prefix: String,
    instance: String,
    link: std::sync::Mutex<Option<Link>>,
    /// Held by the one caller that is reconnecting.
    reconnecting: tokio::sync::Mutex<()>,
    scripts: Scripts,
    subs: Arc<Subscriptions>,
    live: Arc<RwLock<Option<Arc<HashSet<String>>>>>,
    metrics: DomainMetrics,
    /// How long (ms) a couple's keys outlive their last write: [`KEEP_AFTER`] past the
    /// longest a signal or a resend id is kept.
    keep_ms: u64,
    /// The subscription and lease tasks, aborted when the bus is dropped.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

/// Milliseconds, as the scripts take durations.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The wall clock in milliseconds since the Unix epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

/// A Redis error as the domain sees it.
fn unavailable(e: &redis::RedisError) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// Connects (failing within `timeout`, at most half the actors' call timeout, if Redis
    /// does not answer; `settings` give the signal and resend lifetimes the keys must
    /// outlive), checks the eviction
    /// policy, and starts the lease and subscription tasks.
    pub async fn connect(
        url: &str,
        prefix: &str,
        instance: &str,
        timeout: Duration,
        settings: &Settings,
        metrics: DomainMetrics,
    ) -> Result<Arc<Self>, StoreError> {
        let down = |e: String| StoreError::Unavailable(format!("redis: {e}"));
        // Each Redis call must give up well before the room's caller does (`call_timeout`),
        // or a Redis that hangs (accepts, never answers) surfaces as the caller's generic
        // `unavailable` instead of `storage_unavailable`.
        let timeout = timeout.min(settings.call_timeout / 2);
        let client = Client::open(url).map_err(|e| down(e.to_string()))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let subs = Arc::new(Subscriptions::new(timeout));
        let live = Arc::new(RwLock::new(None));
        // A per-start suffix: a restarted instance (same INSTANCE_ID, connection ids from 1
        // again) never takes over the owners, and so the presence, of its previous run.
        let boot = actors::SignalId::generate();
        let bus = Self {
            client: client.clone(),
            config,
            prefix: prefix.to_owned(),
            instance: format!("{instance}-{}", &boot.as_str()[..8]),
            link: std::sync::Mutex::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
            scripts: Scripts::load(),
            subs: Arc::clone(&subs),
            live: Arc::clone(&live),
            metrics,
            keep_ms: ms(settings.signal_ttl.max(settings.dedupe_window) + KEEP_AFTER),
            tasks: std::sync::Mutex::new(Vec::new()),
        };
        let link = bus.link().await.map_err(|e| down(e.to_string()))?;
        bus.warn_on_eviction(link.conn).await;
        let reader = subs.start(client).await.map_err(|e| down(e.to_string()))?;
        let bus = Arc::new(bus);
        // The lease task holds only a weak reference, so dropping the bus stops it.
        let lease = tokio::spawn(renew_lease(Arc::downgrade(&bus)));
        if let Ok(mut tasks) = bus.tasks.lock() {
            tasks.extend([reader, lease]);
        }
        Ok(bus)
    }

    /// An evicted key is a lost signal: say so at start when Redis may evict.
    async fn warn_on_eviction(&self, mut conn: MultiplexedConnection) {
        let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        if let Ok(v) = policy
            && let Some(p) = v.get(1)
            && p != "noeviction"
        {
            tracing::warn!(policy = %p, "Redis may evict keys (maxmemory-policy is not noeviction): signals could be lost under memory pressure");
        }
    }

    /// The command connection, opened (and its server's `run_id` read) if needed.
    async fn link(&self) -> Result<Link, BusError> {
        if let Some(link) = self.current_link() {
            return Ok(link);
        }
        // One caller reconnects; the others fail at once instead of queueing behind it
        // (each step may take the whole storage timeout when Redis does not answer).
        let Ok(_reconnecting) = self.reconnecting.try_lock() else {
            return Err(BusError::Unavailable("reconnecting to Redis".to_owned()));
        };
        if let Some(link) = self.current_link() {
            return Ok(link);
        }
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| unavailable(&e))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| BusError::Unavailable("INFO server has no run_id".to_owned()))?;
        // Loaded once per connection (a new server has none), so calls in flight at once do
        // not each miss the script and send it again.
        for script in self.scripts.all() {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| unavailable(&e))?;
        }
        let link = Link { conn, run_id };
        *self.slot() = Some(link.clone());
        Ok(link)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Link>> {
        self.link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current_link(&self) -> Option<Link> {
        self.slot().clone()
    }

    /// Forgets the command connection after a connection error: the next call reconnects.
    fn drop_link(&self) {
        *self.slot() = None;
    }

    /// Runs a prepared script on `link` (scripts that pass the link's `run_id` need it before
    /// the call), timed as storage operation `op`.
    async fn run(
        &self,
        op: &'static str,
        link: Link,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, BusError> {
        let started = Instant::now();
        let mut conn = link.conn;
        let result = invocation.invoke_async::<Value>(&mut conn).await;
        self.settle(op, started, result)
    }

    /// Runs one command on the command connection, timed as storage operation `op`.
    async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, BusError> {
        let mut conn = self.link().await?.conn;
        let started = Instant::now();
        let result = cmd.query_async(&mut conn).await;
        self.settle(op, started, result)
    }

    /// Records a call's duration and outcome; a connection error drops the link, so the next
    /// call reconnects (and reads the `run_id` again).
    fn settle<T>(
        &self,
        op: &'static str,
        started: Instant,
        result: redis::RedisResult<T>,
    ) -> Result<T, BusError> {
        self.metrics
            .storage_op("redis", op, started.elapsed(), result.is_ok());
        result.map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.drop_link();
            }
            unavailable(&e)
        })
    }

    fn key(&self, couple: &CoupleId, suffix: &str) -> String {
        format!("{}:{{{couple}}}:{suffix}", self.prefix)
    }

    fn leases_key(&self) -> String {
        format!("{}:{{n}}:live", self.prefix)
    }

    fn channel(&self, couple: &CoupleId) -> String {
        self.key(couple, "ch")
    }
}

/// Renews the instance's lease every [`LEASE_RENEW`] and keeps the live set (`None` after a
/// failure), and checks that the subscriber connection still answers. Ends when the bus is
/// dropped.
async fn renew_lease(bus: std::sync::Weak<RedisBus>) {
    let mut every = tokio::time::interval(LEASE_RENEW);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        let live = bus.renew().await.ok().map(Arc::new);
        if let Ok(mut slot) = bus.live.write() {
            *slot = live;
        }
        bus.subs.check().await;
    }
}

impl RedisBus {
    async fn renew(&self) -> Result<HashSet<String>, BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(self.leases_key())
            .arg(&self.instance)
            .arg(ms(LEASE));
        let reply = self.run("lease", link, &inv).await?;
        wire::strings(&reply).map(|v| v.into_iter().collect())
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn subscribe(&self, couple: &CoupleId, sink: BusSink) -> Result<u64, BusError> {
        let started = Instant::now();
        let result = self.subs.subscribe(self.channel(couple), sink).await;
        self.metrics
            .storage_op("redis", "subscribe", started.elapsed(), result.is_ok());
        result
    }

    async fn unsubscribe(&self, couple: &CoupleId, subscription: u64) {
        self.subs
            .unsubscribe(&self.channel(couple), subscription)
            .await;
    }

    async fn seed(
        &self,
        couple: &CoupleId,
        epoch: u64,
        devices: &[DeviceRecord],
    ) -> Result<(), BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.seed.prepare_invoke();
        inv.key(self.key(couple, "m"))
            .key(self.key(couple, "p"))
            .arg(epoch)
            .arg(&link.run_id)
            .arg(self.key(couple, "s:"))
            .arg(self.keep_ms)
            .arg(self.channel(couple));
        for d in devices {
            inv.arg(d.device.as_str()).arg(d.paired_at.0);
        }
        self.run("seed", link, &inv).await.map(|_| ())
    }

    async fn append(&self, signal: Append<'_>, settings: &Settings) -> Result<Appended, BusError> {
        let link = self.link().await?;
        let couple = signal.couple;
        let window = if signal.dedupe {
            ms(settings.dedupe_window)
        } else {
            0
        };
        let mut inv = self.scripts.append.prepare_invoke();
        inv.key(self.key(couple, "m"))
            .key(self.key(couple, "p"))
            .key(self.key(couple, &format!("id:{}:{}", signal.from, signal.id)))
            .arg(&link.run_id)
            .arg(signal.now.0)
            .arg(ms(settings.signal_ttl))
            .arg(signal.from.as_str())
            .arg(signal.id.as_str())
            .arg(signal.payload.as_str())
            .arg(settings.mailbox.max_signals)
            .arg(settings.mailbox.max_bytes)
            .arg(window)
            .arg(self.key(couple, "s:"))
            .arg(self.channel(couple))
            .arg(signal.to.map_or("", DeviceId::as_str))
            .arg(self.keep_ms)
            .arg(wall_ms());
        let reply = self.run("append", link, &inv).await?;
        let parts = wire::array(&reply)?;
        match text(parts.first())?.as_str() {
            "OK" => Ok(Appended::Fresh {
                seq: Seq(int(parts.get(1))?),
                expired: count(parts.get(2))?,
                evicted: count(parts.get(3))?,
            }),
            "DUP" => Ok(Appended::Duplicate(Seq(int(parts.get(1))?))),
            other => Err(wire::refusal(other)),
        }
    }

    async fn join(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        owner: &str,
        last_seq: Option<Seq>,
        now: Timestamp,
    ) -> Result<JoinState, BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.join.prepare_invoke();
        inv.key(self.key(couple, "m"))
            .key(self.key(couple, "p"))
            .arg(device.as_str())
            .arg(owner)
            .arg(last_seq.map(|s| s.0.to_string()).unwrap_or_default())
            .arg(now.0)
            .arg(self.key(couple, "s:"))
            .arg(self.channel(couple))
            .arg(self.keep_ms);
        let reply = self.run("join", link, &inv).await?;
        let parts = wire::array(&reply)?;
        if text(parts.first())? != "OK" {
            return Err(wire::refusal(&text(parts.first())?));
        }
        Ok(JoinState {
            head: Seq(int(parts.get(1))?),
            recovered: int(parts.get(2))? == 1,
            expired: count(parts.get(3))?,
            present: presence(parts.get(4))?,
            backlog: entries(couple, parts.get(5))?,
        })
    }

    async fn leave(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        owner: &str,
    ) -> Result<bool, BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.key(self.key(couple, "p"))
            .arg(device.as_str())
            .arg(owner)
            .arg(self.channel(couple));
        let reply = self.run("leave", link, &inv).await?;
        Ok(int(Some(&reply))? == 1)
    }

    async fn sweep(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        owner: &str,
    ) -> Result<bool, BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.key(self.key(couple, "p"))
            .key(self.leases_key())
            .arg(device.as_str())
            .arg(owner)
            .arg(actors::cluster::owner_instance(owner))
            .arg(self.channel(couple));
        let reply = self.run("sweep", link, &inv).await?;
        Ok(int(Some(&reply))? == 1)
    }

    async fn touch(&self, couple: &CoupleId) -> Result<(), BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.touch.prepare_invoke();
        inv.key(self.key(couple, "m"))
            .key(self.key(couple, "p"))
            .arg(self.keep_ms);
        self.run("touch", link, &inv).await.map(|_| ())
    }

    async fn ack(&self, couple: &CoupleId, device: &DeviceId, up_to: Seq) -> Result<(), BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.ack.prepare_invoke();
        inv.key(self.key(couple, "m"))
            .arg(device.as_str())
            .arg(up_to.0.to_string())
            .arg(self.key(couple, "s:"));
        self.run("ack", link, &inv).await.map(|_| ())
    }

    async fn fetch(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        ack: Option<Seq>,
        after: Option<Seq>,
        now: Timestamp,
    ) -> Result<(Vec<Signal>, usize), BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.fetch.prepare_invoke();
        inv.key(self.key(couple, "m"))
            .arg(device.as_str())
            .arg(ack.map(|s| s.0.to_string()).unwrap_or_default())
            .arg(after.map(|s| s.0.to_string()).unwrap_or_default())
            .arg(now.0)
            .arg(self.key(couple, "s:"));
        let reply = self.run("fetch", link, &inv).await?;
        let parts = wire::array(&reply)?;
        Ok((entries(couple, parts.get(1))?, count(parts.first())?))
    }

    async fn presence(&self, couple: &CoupleId) -> Result<Vec<(DeviceId, String)>, BusError> {
        let reply: Value = self
            .query("presence", redis::cmd("HGETALL").arg(self.key(couple, "p")))
            .await?;
        presence(Some(&reply))
    }

    async fn device_revoked(&self, couple: &CoupleId, device: &DeviceId) -> Result<(), BusError> {
        let link = self.link().await?;
        let mut inv = self.scripts.revoke.prepare_invoke();
        inv.key(self.key(couple, "m"))
            .key(self.key(couple, "p"))
            .arg(device.as_str())
            .arg(self.key(couple, "s:"))
            .arg(self.channel(couple));
        self.run("revoke", link, &inv).await.map(|_| ())
    }

    async fn lock(&self, couple: &CoupleId, wait: Duration) -> Result<String, BusError> {
        let token = actors::SignalId::generate().as_str().to_owned();
        let key = self.key(couple, "lk");
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ms(LOCK_HELD_AT_MOST));
        loop {
            let answer: Option<String> = self.query("lock", &set).await?;
            if answer.is_some() {
                return Ok(token);
            }
            if Instant::now() + pause > deadline {
                return Err(BusError::Unavailable(format!(
                    "the couple's lock stayed taken for {wait:?}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn unlock(&self, couple: &CoupleId, token: &str) {
        let Ok(link) = self.link().await else { return };
        let mut inv = self.scripts.unlock.prepare_invoke();
        inv.key(self.key(couple, "lk")).arg(token);
        if let Err(e) = self.run("unlock", link, &inv).await {
            tracing::warn!(couple_id = %couple, cause = %e, "the couple's lock expires by itself");
        }
    }

    fn live_instances(&self) -> Option<Arc<HashSet<String>>> {
        self.live.read().ok().and_then(|l| l.clone())
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.query::<String>("ping", &redis::cmd("PING"))
            .await
            .map(|_| ())
    }
}
