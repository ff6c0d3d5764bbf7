//! Load generator for a running Our Memories server.
//!
//! ```text
//! cargo run --release --example loadgen -- [flags]
//! ```
//!
//! It talks only to a server on the loopback interface (`127.0.0.1`, `localhost` or `::1`),
//! runs four bounded phases, prints a plain-text table and then one JSON line with every
//! figure (the last line of stdout, for scripts: `... | tail -n 1 | jq .`), and stops by
//! itself. Warnings and the error samples go to stderr. The exit status is 1 if any error was
//! counted (failed pairing, refused join, lost signal, unexpected disconnect...), else 0.
//!
//! # Phases
//!
//! 1. **Pairing**: pairs `--couples` couples (`POST /api/pair/initiate` as device `a`, then
//!    `POST /api/pair/confirm` as device `b`), `--concurrency` at a time. Reports pairings/s.
//! 2. **Join**: opens a WebSocket (`GET /ws`, `TCP_NODELAY`, 4 KiB read buffer, unbuffered
//!    writes) for both devices of every couple and sends `join-couple`, `--concurrency` at a
//!    time. The join latency of one socket runs from the TCP connect to the `joined` frame.
//!    Reports joins/s and the p50/p99 join latency. With `--transport socketio` the sockets
//!    speak Socket.IO instead; with `--transport rest` a device's join is one fetch of its
//!    mailbox (both below).
//! 3. **Relay**: in every couple at once, `a` sends `--messages` `webrtc-signal`s to `b`, each
//!    with the payload `{"n":<index>,"t":<ns since a shared start>,"pad":"xxx..."}`. `b`
//!    measures the latency on receipt, checks the order, and acknowledges (`ack`) every
//!    `--ack-every` signals and at the end. At most `--window` signals per couple are in flight
//!    (sent by `a`, not yet received by `b`), so with the acknowledgement lag a mailbox holds
//!    at most `--window + --ack-every` signals and never reaches its bound (256 signals,
//!    1 MiB by default). Reports messages/s (all couples together) and the latency
//!    p50/p90/p99/max in microseconds. With `--server-pid`, reads the server's CPU time
//!    (`utime + stime` in `/proc/<pid>/stat`) just before the first signal and after the last
//!    one, and reports CPU microseconds per relayed message; the load generator's own CPU
//!    (`/proc/self/stat`) likewise. The clock ticks are 10 ms, so give the phase a few seconds
//!    at least (`--messages`).
//! 4. **Idle**: pairs `ceil(--idle / 2)` more couples, opens `--idle` more sockets (both
//!    devices of those couples) and joins them, then holds every socket open for
//!    `--hold-secs` while reading it, so the client answers the server's pings. With
//!    `--idle-alone`, pairs `--idle` couples and joins only device `a` of each: every idle
//!    socket is alone in its room. With `--server-pid`, reads the server's `VmRSS` from
//!    `/proc/<pid>/status` before opening them and once all have joined, and reports KiB per
//!    idle connection, and the server's CPU during the hold as a percentage of one core
//!    (its CPU time over the hold's wall time). At the end of the hold
//!    it reports how many sockets (relay and idle) are still open. The KiB figure is the
//!    growth of the server's RSS, so it is only meaningful on a server that has not held more
//!    sockets before: memory freed by earlier sockets stays with the allocator and is reused,
//!    and a repeated run on the same server shows a much smaller growth.
//!
//! All sockets are kept open and read from the moment they join until the end of the run
//! (the server closes a socket that answers no ping for 8 s), then closed.
//!
//! # Socket.IO
//!
//! `--transport socketio` runs the same phases over Socket.IO (docs/protocol.md §12): each
//! socket is a WebSocket to `/socket.io/?EIO=4&transport=websocket` (Engine.IO v4, no
//! long-polling), waits for the Engine.IO open packet, connects namespace `/` with the join
//! fields as `auth` (`40{"coupleId","deviceId","token"}`) and waits for the `joined` event.
//! Signals are `42["webrtc-signal",{"to":"b","payload":...}]` (with `--ids`, sent with a
//! callback, `42<n>[...]`, answered `43<n>[{"id","seq"}]`), acknowledgements
//! `42["ack",{"seq":N}]`, and every Engine.IO ping (`2`) is answered (`3`). The checks are the
//! same: nothing missing, duplicated or out of order.
//!
//! # REST
//!
//! `--transport rest` runs the join and relay phases over the REST routes (docs/protocol.md
//! §4), `POST /api/signal` one way and `GET /api/signals/<coupleId>/<deviceId>?after=<seq>`
//! the other, with the same window, payload, latency, checks, `--rate` and CPU readings. It
//! has no idle phase (`--idle 0` is required: REST holds no socket to keep open) and no
//! `--ids` (REST sends carry no client id, §4.1).
//!
//! * **Connections.** Each device has its own HTTP client with one HTTP/1.1 keep-alive
//!   connection (`TCP_NODELAY`), two per couple as with sockets: each device has at most one
//!   request in flight, so that is all it needs. A shared pool would open about as many but
//!   hand them around under one lock, and their number would vary with timing; one per device
//!   keeps the server's connection count, and the client's work per request, comparable with
//!   the socket modes. A device's join is its first fetch, without `after`: it opens the
//!   connection and checks the token; the join latency is that request. These connections
//!   count against the server's `MAX_CONNECTIONS_PER_IP` (64), and so do the up to
//!   `--concurrency` idle keep-alive connections left by pairing (as do WebSockets, in every
//!   mode): start the server with a cap above `2 * couples + concurrency`, or the joins
//!   beyond it are refused (`503 too_many_connections`).
//! * **Sending.** `a` posts each signal (`Authorization: Bearer`, body
//!   `{"coupleId","fromDeviceId":"a","toDeviceId":"b","signalPayload":<payload>}`) and reads
//!   the answer before posting the next: HTTP/1.1 runs one request at a time on a connection,
//!   and posts over parallel connections could overtake each other, so the order check would
//!   measure the client. The window still bounds what is in flight: a signal counts from its
//!   post until `b` has fetched it, so up to `--window` accepted signals may wait in the
//!   mailbox. Every 202 counts as `accepted`; an error answer is a refusal and frees its
//!   window slot.
//! * **Receiving.** The server has no long poll (§4.2 takes only `after`), so `b` polls: it
//!   fetches again as soon as it has processed the signals of the previous fetch, or
//!   `--poll-ms` after a fetch that returned none. Signals are not removed by reading them:
//!   each fetch's `after` is the highest seq received so far, the cumulative acknowledgement
//!   (§4.2, §5.4) of what the earlier fetches returned. `--ack-every` does not apply, and a
//!   mailbox holds at most `2 * --window` signals (a window in flight, a window fetched and
//!   not yet acknowledged). Once every signal has arrived, `b` fetches once more with the last
//!   seq as `after`, the counterpart of the final `ack`, so the mailbox ends empty. `b` starts
//!   polling when the relay starts (the signals wait in the mailbox, so nothing is lost), so
//!   its polls fall within the CPU readings. A signal's latency runs from just before its
//!   post to the processing of the fetch that returned it: the post's round trip, up to
//!   `--poll-ms` of polling delay, and the fetch. The relay reports the fetches (`polls`, without
//!   the final one), those that returned no signal (`empty_polls`), and as `acks` the fetches
//!   whose `after` moved, the final one included.
//! * **What the server does more.** Without a socket, `b` is offline to the server: each
//!   signal is written to storage before its 202 and deleted again once acknowledged (§5.4;
//!   on the embedded store, group-committed transactions with an fsync each), where a socket
//!   receiver's signals stay in memory. Each request also checks the token (HMAC and a device
//!   lookup) where a socket checks it once, at its join. The CPU per message and the latency
//!   include all of that and every empty poll.
//!
//! # Flags
//!
//! | flag | default | meaning |
//! |------|---------|---------|
//! | `--url URL` | `http://127.0.0.1:3000` | server base URL; loopback hosts only, `http` only |
//! | `--couples N` | 100 | couples paired and used for the relay |
//! | `--concurrency C` | 32 | pairings / connection setups in flight at once |
//! | `--messages M` | 200 | signals sent from `a` to `b` in each couple |
//! | `--payload-bytes P` | 200 | length of the `pad` string in each payload |
//! | `--window W` | 16 | signals in flight per couple |
//! | `--rate R` | 0 | open loop: all couples together send R signals/s, each couple at `R / couples` on its own phase (still at most `--window` in flight); 0 = closed loop, as fast as the window allows |
//! | `--ack-every E` | 32 | `b` acknowledges every E signals (not `rest`: each fetch acknowledges the ones before) |
//! | `--idle K` | 1000 | extra idle sockets (0 skips phase 4) |
//! | `--hold-secs S` | 10 | how long the idle phase holds every socket (0 = no hold) |
//! | `--idle-alone` | off | each idle socket is its own couple's only joined device |
//! | `--timeout-secs T` | 60 | the relay phase gives up waiting after T seconds |
//! | `--ids` | off | give each signal an `id` (`s<n>`); the server then answers `accepted` (not with `rest`) |
//! | `--url-b URL` | `--url` | where the `b` devices connect: another instance of a cluster (`REDIS_URL`), so each couple's two devices are on different instances |
//! | `--server-pid PID[,PID…]` | none | read the server's memory from `/proc/PID/status` and CPU time from `/proc/PID/stat`; with several (the instances of a cluster, and Redis) the figures are their sums |
//! | `--transport T` | `ws` | `ws` (JSON WebSocket at `/ws`), `socketio` (Socket.IO at `/socket.io/`) or `rest` (`POST /api/signal`, `b` polls `GET /api/signals/…`; needs `--idle 0`) |
//! | `--poll-ms MS` | 5 | `rest`: `b` fetches again MS ms after a fetch that returned no signal (at once after one that did) |
//! | `-h`, `--help` | | print this usage |
//!
//! Flags take their value as the next argument or after `=` (`--couples=500`).
//!
//! # File descriptors
//!
//! The run needs `2 * (couples + ceil(idle / 2))` sockets (over REST, keep-alive connections)
//! in this process and as many in
//! the server, and the default Linux soft limit of 1024 open files is too low for the
//! defaults (about 1200). Raise it in the shell that starts each process, e.g.
//! `ulimit -n 65536` (at most the hard limit, `ulimit -Hn`), before starting the server and
//! before running the load generator.
//! The load generator warns when its own limit (or the server's, with `--server-pid`) looks
//! too low; failed connections are counted and reported, never a panic.
//!
//! # Example
//!
//! ```text
//! ulimit -n 65536
//! RATE_LIMIT=off MAX_CONNECTIONS_PER_IP=60000 DATA_DIR=$(mktemp -d) PORT=3000 ./target/release/our-memories & SERVER=$!
//! cargo run --release --example loadgen -- --server-pid $SERVER
//! cargo run --release --example loadgen -- --couples 500 --idle 4000 --server-pid $SERVER
//! kill -INT $SERVER
//! # the relay over REST (a fresh server as above)
//! RATE_LIMIT=off MAX_CONNECTIONS_PER_IP=60000 DATA_DIR=$(mktemp -d) PORT=3000 ./target/release/our-memories & SERVER=$!
//! cargo run --release --example loadgen -- --transport rest --idle 0 --hold-secs 0 --server-pid $SERVER
//! kill -INT $SERVER
//! ```
//!
//! The load generator and the server share the machine's cores, so the figures measure the
//! pair of them; run it on an otherwise idle machine and say how many cores it had.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The server's default mailbox bound, in signals.
const MAILBOX_SIGNALS: usize = 256;
/// The server's default mailbox bound, in bytes.
const MAILBOX_BYTES: usize = 1024 * 1024;
/// Longest wait for one connection: TCP connect, handshake and `joined`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `--poll-ms`: how long a REST receiver waits after a fetch that returned no signal.
const DEFAULT_POLL: Duration = Duration::from_millis(5);
/// Longest wait for one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for every socket task to close at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a receiver that has nothing to read rechecks whether it is done.
const RECHECK: Duration = Duration::from_millis(100);
/// Pause between the last join of the idle phase and the memory reading.
const SETTLE: Duration = Duration::from_secs(1);
/// Distinct error samples printed per phase.
const SAMPLES: usize = 5;

const USAGE: &str = "\
usage: cargo run --release --example loadgen -- [flags]

  --url URL            server base URL, loopback only   (default http://127.0.0.1:3000)
  --couples N          couples paired and relayed       (default 100)
  --concurrency C      pairings / joins in flight       (default 32)
  --messages M         signals a -> b per couple        (default 200)
  --payload-bytes P    filler bytes in each payload     (default 200)
  --window W           signals in flight per couple     (default 16)
  --rate R             total signals/s, paced; 0 = as fast as the window allows (default 0)
  --ack-every E        b acknowledges every E signals   (default 32; rest: every fetch)
  --idle K             extra idle WebSockets, 0 = skip  (default 1000)
  --hold-secs S        hold all sockets open S seconds  (default 10)
  --idle-alone         each idle socket alone in its own couple's room
  --timeout-secs T     relay phase gives up after T s   (default 60)
  --ids                give each signal an id (the server then answers `accepted`);
                       not with rest
  --url-b URL          where the b devices connect (another cluster instance)
                                                        (default: --url)
  --server-pid PID[,PID...]
                       read the server's VmRSS from /proc/PID/status and its CPU
                       time (relay phase) from /proc/PID/stat
  --transport T        ws (JSON WebSocket at /ws), socketio (Socket.IO v5 over
                       Engine.IO v4 WebSocket at /socket.io/) or rest (POST
                       /api/signal, b polls GET /api/signals/..; needs --idle 0)
                                                        (default ws)
  --poll-ms MS         rest: b polls again MS ms after a fetch without signals,
                       at once after one with signals   (default 5)
  -h, --help           this text

Needs about 2 * (couples + idle/2) open files in this process and in the server:
run `ulimit -n 65536` in the shells that start both.
The last line of stdout is one JSON object with every figure.";

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Args {
    url: String,
    url_b: Option<String>,
    couples: usize,
    concurrency: usize,
    messages: usize,
    payload_bytes: usize,
    window: usize,
    rate: usize,
    ack_every: usize,
    idle: usize,
    idle_alone: bool,
    hold: Duration,
    timeout: Duration,
    ids: bool,
    server_pids: Vec<u32>,
    transport: Transport,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:3000".to_owned(),
            url_b: None,
            couples: 100,
            concurrency: 32,
            messages: 200,
            payload_bytes: 200,
            window: 16,
            rate: 0,
            ack_every: 32,
            idle: 1000,
            idle_alone: false,
            hold: Duration::from_secs(10),
            timeout: Duration::from_mins(1),
            ids: false,
            server_pids: Vec::new(),
            transport: Transport::Ws,
        }
    }
}

/// What the command line asked for.
enum Command {
    Run(Args),
    Help,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: expected a non-negative integer, got {value:?}"))
}

fn parse_args(cli: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = Args::default();
    let mut transport = args.transport.name().to_owned();
    let mut poll = DEFAULT_POLL;
    let mut it = cli.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        if arg == "--ids" {
            args.ids = true;
            continue;
        }
        if arg == "--idle-alone" {
            args.idle_alone = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        if !flag.starts_with("--") {
            return Err(format!("unexpected argument {arg:?}"));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        match flag.as_str() {
            "--url" => args.url = value,
            "--url-b" => args.url_b = Some(value),
            "--couples" => args.couples = number(&flag, &value)?,
            "--concurrency" => args.concurrency = number(&flag, &value)?,
            "--messages" => args.messages = number(&flag, &value)?,
            "--payload-bytes" => args.payload_bytes = number(&flag, &value)?,
            "--window" => args.window = number(&flag, &value)?,
            "--rate" => args.rate = number(&flag, &value)?,
            "--ack-every" => args.ack_every = number(&flag, &value)?,
            "--idle" => args.idle = number(&flag, &value)?,
            "--hold-secs" => args.hold = Duration::from_secs(number(&flag, &value)?),
            "--timeout-secs" => args.timeout = Duration::from_secs(number(&flag, &value)?),
            "--server-pid" => {
                args.server_pids = value
                    .split(',')
                    .map(|p| number(&flag, p))
                    .collect::<Result<_, _>>()?;
            }
            "--transport" => transport = value,
            "--poll-ms" => poll = Duration::from_millis(number(&flag, &value)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    args.transport = match transport.as_str() {
        "ws" => Transport::Ws,
        "socketio" => Transport::SocketIo,
        "rest" => Transport::Rest { poll },
        _ => {
            return Err(format!(
                "--transport: expected ws, socketio or rest, got {transport:?}"
            ));
        }
    };
    if matches!(args.transport, Transport::Rest { .. }) {
        if args.ids {
            return Err("--ids: REST sends carry no client id (docs/protocol.md §4.1)".to_owned());
        }
        if args.idle > 0 {
            return Err("--transport rest holds no idle sockets: add --idle 0".to_owned());
        }
    }
    for (name, v) in [
        ("--concurrency", args.concurrency),
        ("--window", args.window),
        ("--ack-every", args.ack_every),
    ] {
        if v == 0 {
            return Err(format!("{name} must be at least 1"));
        }
    }
    if args.timeout.is_zero() {
        return Err("--timeout-secs must be at least 1".to_owned());
    }
    Ok(Command::Run(args))
}

/// Where the server is. Only loopback addresses are accepted.
#[derive(Debug)]
struct Target {
    /// `http://host:port`, no trailing slash.
    base: String,
    /// `ws://host:port/ws`.
    ws_url: String,
    /// `ws://host:port/socket.io/?EIO=4&transport=websocket`.
    sio_url: String,
    /// Host for `TcpStream::connect` (no brackets).
    host: String,
    port: u16,
    /// `--url-b`: where the `b` devices connect (another instance of a cluster).
    b: Option<Box<Target>>,
}

impl Target {
    /// Where `dev` connects.
    fn of(&self, dev: Dev) -> &Target {
        match (dev, &self.b) {
            (Dev::B, Some(b)) => b,
            _ => self,
        }
    }
}

fn parse_target(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url:?}: must start with http:// (no TLS)"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("--url {url:?}: unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => number::<u16>("--url port", p)?,
        None => 80,
    };
    if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
        return Err(format!(
            "--url {url:?}: only loopback servers (127.0.0.1, localhost, [::1]) may be loaded"
        ));
    }
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Target {
        base: format!("http://{shown}"),
        ws_url: format!("ws://{shown}/ws"),
        sio_url: format!("ws://{shown}/socket.io/?EIO=4&transport=websocket"),
        host: host.to_owned(),
        port,
        b: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Small helpers: error counts, percentiles, /proc
// ---------------------------------------------------------------------------------------------

/// Errors by kind, with a count each.
#[derive(Debug, Default)]
struct Errors(BTreeMap<String, u64>);

impl Errors {
    fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_default() += 1;
    }

    fn merge(&mut self, other: Errors) {
        for (k, n) in other.0 {
            *self.0.entry(k).or_default() += n;
        }
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn to_json(&self) -> Value {
        json!(self.0)
    }

    /// Prints the most frequent kinds to stderr.
    fn report(&self, phase: &str) {
        if self.0.is_empty() {
            return;
        }
        let mut kinds: Vec<_> = self.0.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        for (kind, n) in kinds.into_iter().take(SAMPLES) {
            eprintln!("  {phase} error x{n}: {kind}");
        }
    }
}

/// u64 to f64 for reporting; counts and nanoseconds here stay far below 2^53.
#[allow(clippy::cast_precision_loss)]
fn float(x: u64) -> f64 {
    x as f64
}

fn count(x: usize) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { float(n) / secs } else { 0.0 }
}

/// Nearest-rank percentiles of a sample, in nanoseconds.
#[derive(Debug, Default, Clone, Copy)]
struct Percentiles {
    n: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    mean: u64,
}

impl Percentiles {
    fn of(mut sample: Vec<u64>) -> Self {
        if sample.is_empty() {
            return Self::default();
        }
        sample.sort_unstable();
        let n = sample.len();
        let rank = |p: usize| {
            // nearest rank: ceil(p% of n), 1-based
            let r = (p * n).div_ceil(100).max(1);
            sample[r - 1]
        };
        let sum: u128 = sample.iter().map(|&x| u128::from(x)).sum();
        Self {
            n: count(n),
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: sample[n - 1],
            mean: u64::try_from(sum / u128::from(count(n))).unwrap_or(u64::MAX),
        }
    }

    fn micros_json(&self) -> Value {
        json!({
            "n": self.n,
            "p50": self.p50 / 1_000,
            "p90": self.p90 / 1_000,
            "p99": self.p99 / 1_000,
            "max": self.max / 1_000,
            "mean": self.mean / 1_000,
        })
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a process (`self` or a pid) has used so far, in clock ticks,
/// from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; after it come
    // state (field 3) ... utime (field 14) and stime (field 15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The sum of `read` over every pid, or `None` if there is none or one cannot be read.
fn sum_over(pids: &[u32], read: impl Fn(&u32) -> Option<u64>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(read).sum()
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux), from
/// `getconf CLK_TCK`.
fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU used by the server and by this process during the relay phase.
#[derive(Debug, Clone, Copy)]
struct RelayCpu {
    ticks_per_sec: u64,
    server_ticks: Option<u64>,
    client_ticks: Option<u64>,
}

impl RelayCpu {
    /// Microseconds of CPU per relayed message, and milliseconds in all.
    fn per_msg(&self, ticks: Option<u64>, messages: u64) -> Option<(f64, f64)> {
        let ms = float(ticks?) * 1e3 / float(self.ticks_per_sec);
        (messages > 0).then(|| (ms * 1e3 / float(messages), ms))
    }

    fn row(&self, table: &mut Table, metric: &str, ticks: Option<u64>, messages: u64) {
        if let Some((us, ms)) = self.per_msg(ticks, messages) {
            table.row(
                "relay",
                metric,
                format!("{us:.2} us ({ms:.0} ms over {messages} msgs)"),
            );
        }
    }

    fn to_json(self, messages: u64) -> Value {
        let server = self.per_msg(self.server_ticks, messages);
        let client = self.per_msg(self.client_ticks, messages);
        json!({
            "ticks_per_sec": self.ticks_per_sec,
            "server_cpu_ms": server.map(|(_, ms)| round1(ms)),
            "server_cpu_us_per_msg": server.map(|(us, _)| round2(us)),
            "client_cpu_ms": client.map(|(_, ms)| round1(ms)),
            "client_cpu_us_per_msg": client.map(|(us, _)| round2(us)),
        })
    }
}

/// The soft limit on open files of a process (`self` or a pid), if readable.
fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

fn check_fd_limits(args: &Args) {
    let sockets = count(2 * (args.couples + args.idle.div_ceil(2)));
    let need = sockets + count(args.concurrency) + 64;
    let check = |who: &str, pid: &str| {
        if let Some(limit) = open_files_limit(pid)
            && limit < need
        {
            eprintln!(
                "warning: {who} may open {sockets} sockets but its open-files limit is {limit}; \
                 connections beyond it will fail (run `ulimit -n 65536` before starting it)"
            );
        }
    };
    check("this process", "self");
    for pid in &args.server_pids {
        check("the server", &pid.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 1: pairing
// ---------------------------------------------------------------------------------------------

/// A paired couple and both device tokens.
#[derive(Debug)]
struct Couple {
    id: String,
    token_a: String,
    token_b: String,
}

impl Couple {
    fn token(&self, dev: Dev) -> &str {
        match dev {
            Dev::A => &self.token_a,
            Dev::B => &self.token_b,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Initiated {
    couple_id: String,
    pairing_token: String,
    device_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Confirmed {
    device_token: String,
}

fn http_error(step: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connect failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    format!("{step}: {kind}")
}

async fn pair_one(client: &reqwest::Client, base: &str) -> Result<Couple, String> {
    let resp = client
        .post(format!("{base}/api/pair/initiate"))
        .json(&json!({ "deviceId": "a" }))
        .send()
        .await
        .map_err(|e| http_error("initiate", &e))?;
    if resp.status() != reqwest::StatusCode::CREATED {
        return Err(format!("initiate: HTTP {}", resp.status()));
    }
    let started: Initiated = resp.json().await.map_err(|e| http_error("initiate", &e))?;
    let resp = client
        .post(format!("{base}/api/pair/confirm"))
        .json(&json!({
            "coupleId": started.couple_id,
            "pairingToken": started.pairing_token,
            "deviceId": "b",
        }))
        .send()
        .await
        .map_err(|e| http_error("confirm", &e))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("confirm: HTTP {}", resp.status()));
    }
    let done: Confirmed = resp.json().await.map_err(|e| http_error("confirm", &e))?;
    Ok(Couple {
        id: started.couple_id,
        token_a: started.device_token,
        token_b: done.device_token,
    })
}

struct PairPhase {
    couples: Vec<Couple>,
    attempted: usize,
    elapsed: Duration,
    errors: Errors,
}

impl PairPhase {
    fn rate(&self) -> f64 {
        per_sec(count(self.couples.len()), self.elapsed)
    }

    fn to_json(&self) -> Value {
        json!({
            "attempted": self.attempted,
            "paired": self.couples.len(),
            "elapsed_ms": self.elapsed.as_millis(),
            "pairings_per_sec": round1(self.rate()),
            "errors": self.errors.to_json(),
        })
    }
}

/// Pairs `n` couples with `concurrency` workers.
async fn pair_many(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    concurrency: usize,
) -> PairPhase {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (client, base, next) = (client.clone(), base.to_owned(), Arc::clone(&next));
        workers.spawn(async move {
            let mut done = Vec::new();
            let mut errors = Errors::default();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match pair_one(&client, &base).await {
                    Ok(c) => done.push(c),
                    Err(e) => errors.add(e),
                }
            }
            (done, errors)
        });
    }
    let mut phase = PairPhase {
        couples: Vec::with_capacity(n),
        attempted: n,
        elapsed: Duration::ZERO,
        errors: Errors::default(),
    };
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok((done, errors)) => {
                phase.couples.extend(done);
                phase.errors.merge(errors);
            }
            Err(e) => phase.errors.add(format!("pairing worker died: {e}")),
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

// ---------------------------------------------------------------------------------------------
// Phase 2 (and 4): connect and join
// ---------------------------------------------------------------------------------------------

type Ws = WebSocketStream<TcpStream>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dev {
    A,
    B,
}

impl Dev {
    fn name(self) -> &'static str {
        match self {
            Dev::A => "a",
            Dev::B => "b",
        }
    }
}

/// Any frame the server sends, reduced to the fields the load generator reads.
#[derive(Deserialize)]
struct ServerFrame {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    payload: Option<Probe>,
    code: Option<String>,
}

/// The payload the load generator sends (`pad` is skipped when reading).
#[derive(Debug, Deserialize)]
struct Probe {
    n: u64,
    t: u64,
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: thousands of sockets in one process, little data on each.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Text of a close frame, or of the end of the stream, for error reports.
fn end_reason(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> String {
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => {
            format!(
                "closed by server: {} {}",
                u16::from(frame.code),
                frame.reason
            )
        }
        Some(Ok(Message::Close(None))) => "closed by server (no code)".to_owned(),
        Some(Err(e)) => format!("socket error: {e}"),
        None => "connection ended without close".to_owned(),
        Some(Ok(other)) => format!("unexpected frame: {other:?}"),
    }
}

/// What a device speaks: the JSON protocol of `/ws`, Socket.IO at `/socket.io/`, or the REST
/// routes (`POST /api/signal`, `GET /api/signals/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    SocketIo,
    /// REST; `b` polls again after `poll` when a fetch returned no signal.
    Rest {
        poll: Duration,
    },
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::SocketIo => "socketio",
            Transport::Rest { .. } => "rest",
        }
    }

    /// `--poll-ms`, for REST.
    fn poll_ms(self) -> Option<u128> {
        match self {
            Transport::Rest { poll } => Some(poll.as_millis()),
            _ => None,
        }
    }
}

/// One server event, reduced to what the load generator needs.
#[derive(Debug)]
enum Event {
    Joined,
    Signal {
        probe: Probe,
        seq: u64,
    },
    /// `accepted` on `/ws`, a successful callback answer on Socket.IO.
    Accepted,
    /// An `error` (its code), a failed callback answer, or a refused Socket.IO handshake.
    Error(String),
    /// A frame the load generator cannot read.
    Malformed(String),
    /// Anything else (`peer-joined`, `peer-left`, Engine.IO open, namespace connect...).
    Other,
}

/// A `/ws` frame.
fn ws_event(text: &str) -> Event {
    let frame = match serde_json::from_str::<ServerFrame>(text) {
        Ok(f) => f,
        Err(e) => return Event::Malformed(format!("unparsable frame: {e}")),
    };
    match frame.kind.as_str() {
        "joined" => Event::Joined,
        "accepted" => Event::Accepted,
        "error" => Event::Error(frame.code.unwrap_or_default()),
        // A relay without mailboxes (../shared/bench/rust-floor) sends no seq: the signal's
        // index stands in for it (its acks are then ignored by that server).
        "webrtc-signal" => match (frame.payload, frame.seq) {
            (Some(probe), seq) => {
                let seq = seq.unwrap_or(probe.n + 1);
                Event::Signal { probe, seq }
            }
            (None, _) => Event::Malformed("signal without probe".to_owned()),
        },
        _ => Event::Other,
    }
}

// The Socket.IO client is a hand-written text codec over tokio-tungstenite, the WebSocket
// client the `/ws` mode uses, rather than a Socket.IO client crate: this load generator needs
// only the WebSocket transport, the handshake (`0` open, `40{auth}` namespace connect), the
// Engine.IO heartbeat (`2` -> `3`) and text events and callbacks (`42[...]`, `42<id>[...]`,
// `43<id>[...]`), a few dozen lines. A client crate would bring a second WebSocket stack and
// HTTP client into the build and its own per-event machinery (callbacks, locks, tasks) into the
// client side of the measurement, which is meant to differ between the two modes only by the
// protocol the server speaks.

/// The body of a Socket.IO server event or callback answer, reduced to what is read.
#[derive(Deserialize)]
struct SioBody {
    seq: Option<u64>,
    payload: Option<Probe>,
    code: Option<String>,
    /// A failed callback answer: `{"error":{"code","message"}}`.
    error: Option<ErrorCode>,
    /// A refused handshake (`44{"message":...}`).
    message: Option<String>,
}

/// The `error` of a failed Socket.IO callback answer or of an HTTP error body.
#[derive(Deserialize)]
struct ErrorCode {
    code: String,
}

/// A Socket.IO text packet over Engine.IO v4, namespace `/`. `Err` if the server closed the
/// Engine.IO session (`1`) or disconnected the socket (`41`). Engine.IO pings (`2`) are
/// handled by [`Conn::next_event`] before this.
fn sio_event(text: &str) -> Result<Event, String> {
    let Some(packet) = text.strip_prefix('4') else {
        // Engine.IO: 0 open, 1 close, 3 pong, 6 noop.
        return match text.as_bytes().first() {
            Some(b'1') => Err("engine.io session closed by server".to_owned()),
            _ => Ok(Event::Other),
        };
    };
    let Some((kind, rest)) = packet.split_at_checked(1) else {
        return Ok(Event::Malformed("empty engine.io message".to_owned()));
    };
    // A callback id (digits) may precede the JSON array of an event or an answer.
    let json = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let malformed = |e: serde_json::Error| Event::Malformed(format!("unparsable packet: {e}"));
    Ok(match kind {
        "1" => return Err("socket.io disconnect from server".to_owned()),
        "2" => match serde_json::from_str::<(String, SioBody)>(json) {
            Ok((name, body)) => match name.as_str() {
                "joined" => Event::Joined,
                "error" => Event::Error(body.code.unwrap_or_default()),
                "webrtc-signal" => match (body.payload, body.seq) {
                    (Some(probe), Some(seq)) => Event::Signal { probe, seq },
                    _ => Event::Malformed("signal without probe/seq".to_owned()),
                },
                _ => Event::Other,
            },
            Err(e) => malformed(e),
        },
        // ACK: a callback answer, `[{"id","seq"}]` or `[{"error":{...}}]`.
        "3" => match serde_json::from_str::<(SioBody,)>(json) {
            Ok((SioBody { error: Some(e), .. },)) => Event::Error(e.code),
            Ok(_) => Event::Accepted,
            Err(e) => malformed(e),
        },
        // CONNECT_ERROR: `44{"message":"invalid_token"}`.
        "4" => match serde_json::from_str::<SioBody>(json) {
            Ok(body) => Event::Error(body.message.unwrap_or_default()),
            Err(e) => malformed(e),
        },
        // CONNECT (`40{"sid":...}`, the `joined` event follows) and anything else.
        _ => Event::Other,
    })
}

// ---------------------------------------------------------------------------------------------
// REST: `POST /api/signal` and `GET /api/signals/:coupleId/:deviceId?after=<seq>`
// ---------------------------------------------------------------------------------------------

/// A `GET /api/signals/…` answer, reduced to what is read.
#[derive(Deserialize)]
struct Fetched {
    signals: Vec<FetchedSignal>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FetchedSignal {
    seq: u64,
    signal_payload: Option<Probe>,
}

/// An HTTP error body, `{"error":{"code","message"}}`.
#[derive(Deserialize)]
struct HttpError {
    error: ErrorCode,
}

/// A failed request's status and error code, e.g. `HTTP 429 mailbox_full`.
fn rest_error(status: reqwest::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<HttpError>(body) {
        Ok(e) => format!("HTTP {} {}", status.as_u16(), e.error.code),
        Err(_) => format!("HTTP {}", status.as_u16()),
    }
}

/// The events of one fetch: its signals, oldest first, or the error it answered.
fn fetched_events(status: reqwest::StatusCode, body: &[u8]) -> Vec<Event> {
    if status != reqwest::StatusCode::OK {
        return vec![Event::Error(rest_error(status, body))];
    }
    match serde_json::from_slice::<Fetched>(body) {
        Ok(fetched) => fetched
            .signals
            .into_iter()
            .map(|s| match s.signal_payload {
                Some(probe) => Event::Signal { probe, seq: s.seq },
                None => Event::Malformed("signal without probe".to_owned()),
            })
            .collect(),
        Err(e) => vec![Event::Malformed(format!("unparsable fetch: {e}"))],
    }
}

/// Sends a request and reads its whole answer, so that the connection can be used again.
async fn exchange(
    req: reqwest::RequestBuilder,
    step: &str,
) -> Result<(reqwest::StatusCode, bytes::Bytes), String> {
    let resp = req.send().await.map_err(|e| http_error(step, &e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| http_error(step, &e))?;
    Ok((status, body))
}

/// A fetch in flight; kept across a cancelled [`Rest::next_event`].
type Fetching = std::pin::Pin<Box<dyn Future<Output = Result<Vec<Event>, String>> + Send>>;

/// How device `b` polled over REST.
#[derive(Debug, Default, Clone, Copy)]
struct Polling {
    /// Fetches that looked for signals (the final acknowledgement is not one).
    polls: u64,
    /// Of those, the ones that returned no signal (`b` then waited `--poll-ms`).
    empty: u64,
    /// Of those, the ones whose `after` acknowledged signals of an earlier fetch.
    acks: u64,
}

impl std::ops::Add for Polling {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            polls: self.polls + o.polls,
            empty: self.empty + o.empty,
            acks: self.acks + o.acks,
        }
    }
}

/// One device over REST, with its own HTTP client: one keep-alive connection per device (two
/// per couple, as with sockets), since each device has at most one request in flight.
struct Rest {
    http: reqwest::Client,
    /// `Bearer <token>`.
    auth: reqwest::header::HeaderValue,
    /// `http://host:port/api/signal`.
    send_url: String,
    /// `{"coupleId":…,"fromDeviceId":"a","toDeviceId":"b","signalPayload":`.
    send_prefix: String,
    /// `http://host:port/api/signals/<coupleId>/<deviceId>`.
    fetch_url: String,
    /// `b` polls for signals; `a` only sends.
    receiver: bool,
    /// Wait after a fetch that returned no signal.
    poll: Duration,
    /// Events read and not handed out yet: a fetch's signals, a send's answer.
    queue: std::collections::VecDeque<Event>,
    /// The highest seq handed out. The next fetch happens only once the queue is empty, when
    /// the caller has processed them all, so it is the next fetch's `after`.
    seen: Option<u64>,
    /// The highest `after` sent.
    acked: Option<u64>,
    fetching: Option<Fetching>,
    /// After a fetch without signals: no fetch before this.
    quiet_until: Option<tokio::time::Instant>,
    polls: Polling,
}

impl Rest {
    /// Builds the device's client, and fetches the device's mailbox once: this opens the
    /// keep-alive connection and checks the token, REST's counterpart of a socket's join.
    async fn connect(
        base: &str,
        couple: &Couple,
        dev: Dev,
        poll: Duration,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let auth = format!("Bearer {}", couple.token(dev))
            .parse()
            .map_err(|e| format!("token header: {e}"))?;
        let rest = Rest {
            http,
            auth,
            send_url: format!("{base}/api/signal"),
            send_prefix: format!(
                r#"{{"coupleId":"{}","fromDeviceId":"a","toDeviceId":"b","signalPayload":"#,
                couple.id
            ),
            fetch_url: format!("{base}/api/signals/{}/{}", couple.id, dev.name()),
            receiver: dev == Dev::B,
            poll,
            queue: std::collections::VecDeque::new(),
            seen: None,
            acked: None,
            fetching: None,
            quiet_until: None,
            polls: Polling::default(),
        };
        // Signals already waiting (none in a fresh couple) stay there: a fetch removes nothing.
        match rest.fetch(None).await?.into_iter().next() {
            Some(Event::Error(e)) => Err(format!("join refused: {e}")),
            Some(Event::Malformed(e)) => Err(format!("before joined: {e}")),
            _ => Ok(rest),
        }
    }

    /// `GET /api/signals/…[?after=N]`, as a future that owns what it needs.
    fn fetch(&self, after: Option<u64>) -> Fetching {
        let url = match after {
            Some(seq) => format!("{}?after={seq}", self.fetch_url),
            None => self.fetch_url.clone(),
        };
        let req = self
            .http
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone());
        Box::pin(async move {
            let (status, body) = exchange(req, "fetch").await?;
            Ok(fetched_events(status, &body))
        })
    }

    /// `a`: the answers of its sends, then nothing. `b`: the signals of its fetches. `b`
    /// fetches again as soon as the previous signals are handed out, or `poll` after a fetch
    /// without signals; each fetch's `after` acknowledges what the earlier ones returned.
    /// Cancel-safe: the fetch in flight and the wait are kept.
    async fn next_event(&mut self) -> Result<Event, String> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                if let Event::Signal { seq, .. } = &event {
                    self.seen = self.seen.max(Some(*seq));
                }
                return Ok(event);
            }
            if !self.receiver {
                return std::future::pending().await;
            }
            if self.fetching.is_none() {
                if let Some(at) = self.quiet_until {
                    tokio::time::sleep_until(at).await;
                    self.quiet_until = None;
                }
                if self.seen > self.acked {
                    self.acked = self.seen;
                    self.polls.acks += 1;
                }
                self.polls.polls += 1;
                self.fetching = Some(self.fetch(self.seen));
            }
            let Some(fetching) = self.fetching.as_mut() else {
                continue;
            };
            let events = fetching.await;
            self.fetching = None;
            let events = events?;
            if !events.iter().any(|e| matches!(e, Event::Signal { .. })) {
                self.polls.empty += 1;
                self.quiet_until = Some(tokio::time::Instant::now() + self.poll);
            }
            self.queue.extend(events);
        }
    }

    /// `POST /api/signal`; its answer (202 or an error) is the next event.
    async fn send_signal(&mut self, n: u64, t: u64, pad: &str) -> Result<(), String> {
        let body = format!(r#"{}{{"n":{n},"t":{t},"pad":"{pad}"}}}}"#, self.send_prefix);
        let req = self
            .http
            .post(&self.send_url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let (status, body) = exchange(req, "send").await?;
        self.queue
            .push_back(if status == reqwest::StatusCode::ACCEPTED {
                Event::Accepted
            } else {
                Event::Error(rest_error(status, &body))
            });
        Ok(())
    }

    /// Only the `last` acknowledgement is a request: one more fetch with `after`, since the
    /// fetch that returned the last signals acknowledged only those before them. The others
    /// wait for the next fetch.
    async fn send_ack(&mut self, seq: u64, last: bool) -> Result<bool, String> {
        if !last || self.acked >= Some(seq) {
            return Ok(false);
        }
        self.fetching = None;
        let events = self.fetch(Some(seq)).await?;
        self.acked = Some(seq);
        match events.into_iter().next() {
            Some(Event::Error(e) | Event::Malformed(e)) => Err(format!("last ack: {e}")),
            _ => Ok(true),
        }
    }
}

/// One joined device: a WebSocket (`/ws` or Socket.IO) or a REST client.
enum Conn {
    Socket(Socket),
    Rest(Rest),
}

impl Conn {
    /// The next event. `Err` (the reason) once the socket has ended or a request failed.
    /// Cancel-safe.
    async fn next_event(&mut self) -> Result<Event, String> {
        match self {
            Conn::Socket(socket) => socket.next_event().await,
            Conn::Rest(rest) => rest.next_event().await,
        }
    }

    /// What arrives while a device waits (for "go", for the end of the run): a socket is read,
    /// so its pings are answered; nothing arrives over REST unasked.
    async fn wait_event(&mut self) -> Result<Event, String> {
        match self {
            Conn::Socket(socket) => socket.next_event().await,
            Conn::Rest(_) => std::future::pending().await,
        }
    }

    /// Sends signal `n` to `b`. With `id`, asks for an answer: `accepted` on `/ws`, a
    /// callback (whose id is `n`) on Socket.IO. Over REST every signal is answered (its 202).
    async fn send_signal(&mut self, n: u64, t: u64, pad: &str, id: bool) -> Result<(), String> {
        match self {
            Conn::Socket(socket) => socket.send_signal(n, t, pad, id).await,
            Conn::Rest(rest) => rest.send_signal(n, t, pad).await,
        }
    }

    /// Acknowledges everything up to `seq` (cumulative), without asking for an answer.
    /// `Ok(false)` if nothing was sent: over REST only the `last` ack is a request of its own,
    /// the others ride on the next fetch (its `after`).
    async fn send_ack(&mut self, seq: u64, last: bool) -> Result<bool, String> {
        match self {
            Conn::Socket(socket) => socket.send_ack(seq).await.map(|()| true),
            Conn::Rest(rest) => rest.send_ack(seq, last).await,
        }
    }

    /// REST: how `b` polled. `None` for a socket.
    fn polls(&self) -> Option<Polling> {
        match self {
            Conn::Socket(_) => None,
            Conn::Rest(rest) => Some(rest.polls),
        }
    }

    async fn close(self) {
        match self {
            Conn::Socket(socket) => socket.close().await,
            // Dropping the client closes its keep-alive connection.
            Conn::Rest(_) => {}
        }
    }
}

/// One joined WebSocket, `/ws` or Socket.IO.
struct Socket {
    ws: Ws,
    /// Socket.IO rather than the JSON protocol of `/ws`.
    sio: bool,
    /// Socket.IO: an Engine.IO ping was read and its pong is not written yet.
    pong_due: bool,
}

impl Socket {
    /// The next event. Socket.IO pings are answered here; `/ws` pings by tungstenite. `Err`
    /// (the reason) once the socket has ended. Cancel-safe: a pong whose write was cancelled
    /// is written at the next call (at worst twice, which the server ignores).
    async fn next_event(&mut self) -> Result<Event, String> {
        loop {
            if self.pong_due {
                self.ws
                    .send(Message::text("3"))
                    .await
                    .map_err(|e| format!("send pong: {e}"))?;
                self.pong_due = false;
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) if !self.sio => return Ok(ws_event(text.as_str())),
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => self.pong_due = true,
                Some(Ok(Message::Text(text))) => return sio_event(text.as_str()),
                Some(Ok(
                    Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_),
                )) => {}
                other => return Err(end_reason(other)),
            }
        }
    }

    async fn send_text(&mut self, text: String, what: &str) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| format!("send {what}: {e}"))
    }

    async fn send_signal(&mut self, n: u64, t: u64, pad: &str, id: bool) -> Result<(), String> {
        let id_field = if id {
            format!(r#","id":"s{n}""#)
        } else {
            String::new()
        };
        let body = format!(r#""to":"b"{id_field},"payload":{{"n":{n},"t":{t},"pad":"{pad}"}}"#);
        let text = match (self.sio, id) {
            (false, _) => format!(r#"{{"type":"webrtc-signal",{body}}}"#),
            (true, true) => format!(r#"42{n}["webrtc-signal",{{{body}}}]"#),
            (true, false) => format!(r#"42["webrtc-signal",{{{body}}}]"#),
        };
        self.send_text(text, "webrtc-signal").await
    }

    async fn send_ack(&mut self, seq: u64) -> Result<(), String> {
        let text = if self.sio {
            format!(r#"42["ack",{{"seq":{seq}}}]"#)
        } else {
            format!(r#"{{"type":"ack","seq":{seq}}}"#)
        };
        self.send_text(text, "ack").await
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Joins one device: over REST see [`Rest::connect`]; over a socket, TCP connect, WebSocket
/// handshake, join (`join-couple` on `/ws`; on Socket.IO the namespace connect with the join
/// fields as `auth`), wait for `joined`.
async fn connect_join(
    target: &Target,
    transport: Transport,
    couple: &Couple,
    dev: Dev,
) -> Result<Conn, String> {
    let target = target.of(dev);
    let url = match transport {
        Transport::Ws => target.ws_url.as_str(),
        Transport::SocketIo => target.sio_url.as_str(),
        Transport::Rest { poll } => {
            let rest = Rest::connect(&target.base, couple, dev, poll).await?;
            return Ok(Conn::Rest(rest));
        }
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("tcp connect: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
        .await
        .map_err(|e| format!("websocket handshake: {e}"))?;
    let mut socket = Socket {
        ws,
        sio: transport == Transport::SocketIo,
        pong_due: false,
    };
    let fields = json!({
        "coupleId": couple.id,
        "deviceId": dev.name(),
        "token": couple.token(dev),
    });
    let join = if socket.sio {
        // The Engine.IO open packet comes first, as socket.io-client waits for it.
        match socket.ws.next().await {
            Some(Ok(Message::Text(text))) if text.as_str().starts_with('0') => {}
            Some(Ok(Message::Text(text))) => {
                return Err(format!("expected engine.io open, got {:?}", text.as_str()));
            }
            other => return Err(format!("before open: {}", end_reason(other))),
        }
        format!("40{fields}")
    } else {
        let mut join = fields;
        join["type"] = json!("join-couple");
        join.to_string()
    };
    socket.send_text(join, "join").await?;
    loop {
        match socket.next_event().await {
            Ok(Event::Joined) => return Ok(Conn::Socket(socket)),
            Ok(Event::Error(code)) => return Err(format!("join refused: {code}")),
            Ok(Event::Malformed(e)) => return Err(format!("before joined: {e}")),
            Ok(_) => {}
            Err(reason) => return Err(format!("before joined: {reason}")),
        }
    }
}

struct JoinPhase<T> {
    /// What `on_joined` returned for each joined socket.
    joined: Vec<(usize, Dev, T)>,
    attempted: usize,
    latencies_ns: Vec<u64>,
    elapsed: Duration,
    errors: Errors,
}

impl<T> JoinPhase<T> {
    fn rate(&self) -> f64 {
        per_sec(count(self.joined.len()), self.elapsed)
    }

    fn to_json(&self) -> Value {
        let p = Percentiles::of(self.latencies_ns.clone());
        json!({
            "attempted": self.attempted,
            "joined": self.joined.len(),
            "elapsed_ms": self.elapsed.as_millis(),
            "joins_per_sec": round1(self.rate()),
            "latency_us": p.micros_json(),
            "errors": self.errors.to_json(),
        })
    }
}

/// Connects and joins both devices of every couple, `concurrency` at a time. Each joined socket
/// is handed at once to `on_joined` (which spawns the task that keeps reading it).
async fn join_all<T, F>(
    target: &Arc<Target>,
    transport: Transport,
    couples: &Arc<Vec<Couple>>,
    sockets: usize,
    alone: bool,
    concurrency: usize,
    on_joined: F,
) -> JoinPhase<T>
where
    T: Send + 'static,
    F: Fn(usize, Dev, Conn) -> T + Send + Sync + 'static,
{
    let sockets = sockets.min(if alone { 1 } else { 2 } * couples.len());
    let next = Arc::new(AtomicUsize::new(0));
    let on_joined = Arc::new(on_joined);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(sockets) {
        let (target, couples) = (Arc::clone(target), Arc::clone(couples));
        let (next, on_joined) = (Arc::clone(&next), Arc::clone(&on_joined));
        workers.spawn(async move {
            let mut joined = Vec::new();
            let mut latencies = Vec::new();
            let mut errors = Errors::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= sockets {
                    break;
                }
                let (c, dev) = match (alone, i % 2) {
                    (true, _) => (i, Dev::A),
                    (false, 0) => (i / 2, Dev::A),
                    (false, _) => (i / 2, Dev::B),
                };
                let t0 = Instant::now();
                let joining = connect_join(&target, transport, &couples[c], dev);
                match tokio::time::timeout(JOIN_TIMEOUT, joining).await {
                    Ok(Ok(conn)) => {
                        latencies.push(nanos(t0.elapsed()));
                        joined.push((c, dev, on_joined(c, dev, conn)));
                    }
                    Ok(Err(e)) => errors.add(e),
                    Err(_) => errors.add(format!("no joined within {JOIN_TIMEOUT:?}")),
                }
            }
            (joined, latencies, errors)
        });
    }
    let mut phase = JoinPhase {
        joined: Vec::with_capacity(sockets),
        attempted: sockets,
        latencies_ns: Vec::with_capacity(sockets),
        elapsed: Duration::ZERO,
        errors: Errors::default(),
    };
    while let Some(done) = workers.join_next().await {
        match done {
            Ok((joined, latencies, errors)) => {
                phase.joined.extend(joined);
                phase.latencies_ns.extend(latencies);
                phase.errors.merge(errors);
            }
            Err(e) => phase.errors.add(format!("join worker died: {e}")),
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

// ---------------------------------------------------------------------------------------------
// Socket tasks: hold, relay
// ---------------------------------------------------------------------------------------------

/// Reads (so pings are answered) and discards frames until `signal` holds a value accepted
/// by `until`. `Err` if the socket ends first. Only for sockets that expect nothing useful
/// meanwhile: `b` never waits here (see [`relay_socket`]).
async fn read_until<V>(
    conn: &mut Conn,
    signal: &mut watch::Receiver<V>,
    until: impl FnMut(&V) -> bool,
) -> Result<(), String> {
    let wait = signal.wait_for(until);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            // The sender lives until the end of the run; if it is gone, stop too.
            _ = &mut wait => return Ok(()),
            event = conn.wait_event() => {
                event?;
            }
        }
    }
}

/// Holds a socket open, reading it, until `stop`; then closes it. `Some(reason)` if the
/// socket ended before.
async fn hold(mut conn: Conn, stop: &mut watch::Receiver<bool>) -> Option<String> {
    match read_until(&mut conn, stop, |s| *s).await {
        Ok(()) => {
            conn.close().await;
            None
        }
        Err(reason) => Some(reason),
    }
}

/// Sockets still open (joined and not ended unexpectedly).
#[derive(Debug, Default)]
struct Alive {
    relay: AtomicU64,
    idle: AtomicU64,
}

/// What the two sockets of one couple share during the relay.
#[derive(Debug)]
struct CoupleShared {
    /// Permits for signals in flight: `a` takes one per send, `b` returns one per receipt.
    window: Semaphore,
    /// Signals `b` should not wait for: refused by the server, or never sent.
    not_coming: AtomicU64,
    /// Both devices joined; only such couples take part in the relay.
    active: AtomicBool,
    /// `b` has stopped receiving: `a` stops watching for refusals.
    receiver_done: Notify,
}

/// Relay settings shared by every socket task.
#[derive(Debug)]
struct RelayOpts {
    messages: u64,
    ack_every: u64,
    /// Give every signal an `id`, so the server answers `accepted`.
    ids: bool,
    /// Every signal is answered (`--ids`, or REST's 202): `a` waits for all the answers.
    answered: bool,
    pad: String,
    /// Payload timestamps are nanoseconds since this instant.
    epoch: Instant,
    /// With `--rate`: the time between two signals of one couple.
    every: Option<Duration>,
}

/// What one relay socket did.
#[derive(Debug)]
enum Report {
    /// The couple was incomplete (a device failed to join).
    Skipped,
    /// `a`'s socket ended before the relay started.
    Lost,
    Sender {
        sent: u64,
        accepted: u64,
        refused: Errors,
    },
    Receiver(Tally),
}

/// What device `b` saw.
#[derive(Debug, Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    /// Distinct signals, in order or not.
    received: u64,
    /// Times a signal arrived while earlier ones were still missing.
    out_of_order: u64,
    duplicates: u64,
    /// Acknowledgements sent: `ack` messages; over REST, the fetches whose `after` moved.
    acks: u64,
    /// REST: how `b` polled.
    polls: Option<Polling>,
    last_seq: Option<u64>,
    acked_seq: Option<u64>,
    last_receipt: Option<Instant>,
    timed_out: bool,
    /// Where signals were missing, and what the seq did across the hole.
    gaps: Errors,
    other_errors: Errors,
    /// The `n` expected next.
    next_n: u64,
}

impl Tally {
    /// Records one signal received at `now_ns`.
    fn on_signal(&mut self, probe: &Probe, seq: u64, now_ns: u64) {
        self.last_receipt = Some(Instant::now());
        self.latencies_ns.push(now_ns.saturating_sub(probe.t));
        if probe.n < self.next_n {
            self.duplicates += 1;
        } else {
            if probe.n > self.next_n {
                // Did the server give the missing signals a seq? If the seq moved by one,
                // they never reached the mailbox. (The low 24 bits of a seq count the
                // room's signals.)
                self.out_of_order += 1;
                let skipped = probe.n - self.next_n;
                self.gaps.add(match self.last_seq {
                    Some(l) => format!(
                        "{skipped} signal(s) skipped mid-stream, seq advanced by {}",
                        seq.wrapping_sub(l)
                    ),
                    None => format!(
                        "first {skipped} signal(s) never arrived (first seq counter {})",
                        seq & 0xff_ffff
                    ),
                });
            }
            self.next_n = probe.n + 1;
            self.received += 1;
        }
        self.last_seq = Some(seq);
    }

    /// Acknowledges everything received so far (`last`: the final acknowledgement).
    async fn ack(&mut self, conn: &mut Conn, last: bool) -> Result<(), String> {
        let Some(seq) = self.last_seq else {
            return Ok(());
        };
        if conn.send_ack(seq, last).await? {
            self.acked_seq = Some(seq);
            self.acks += 1;
        }
        Ok(())
    }
}

/// Everything one relay socket task needs.
struct RelayCtx {
    shared: Arc<CoupleShared>,
    opts: Arc<RelayOpts>,
    /// `Some(deadline)` once the relay starts.
    go: watch::Receiver<Option<Instant>>,
    stop: watch::Receiver<bool>,
    report: oneshot::Sender<Report>,
    alive: Arc<Alive>,
}

/// One relay socket, from its join to the end of the run.
async fn relay_socket(mut conn: Conn, dev: Dev, mut ctx: RelayCtx) -> Option<String> {
    ctx.alive.relay.fetch_add(1, Ordering::Relaxed);
    let (report, ended) = match dev {
        // `b` handles signals from the moment it joined. Waiting for "go" first and dropping
        // what arrives meanwhile would race with `a`'s first signals: `a` may see "go", send,
        // and the server relay, before `b`'s task has seen "go" (observed: 12 signals lost).
        Dev::B => {
            // Over REST nothing is lost before "go" (signals wait in the mailbox until a fetch
            // acknowledges them), so `b` starts polling then, and its polls are the relay's.
            if matches!(conn, Conn::Rest(_)) {
                let _ = ctx.go.wait_for(Option::is_some).await;
            }
            receive_side(&mut conn, &ctx.shared, &ctx.opts, &ctx.go).await
        }
        Dev::A => match read_until(&mut conn, &mut ctx.go, Option::is_some).await {
            Err(reason) => {
                ctx.shared
                    .not_coming
                    .fetch_add(ctx.opts.messages, Ordering::Relaxed);
                (Report::Lost, Some(reason))
            }
            Ok(()) if !ctx.shared.active.load(Ordering::Relaxed) => (Report::Skipped, None),
            Ok(()) => {
                // A dropped go channel also ends the wait; the deadline then is "now".
                let deadline = ctx.go.borrow().unwrap_or_else(Instant::now);
                send_side(&mut conn, &ctx.shared, &ctx.opts, deadline).await
            }
        },
    };
    let _ = ctx.report.send(report);
    let reason = match ended {
        Some(reason) => Some(reason),
        None => hold(conn, &mut ctx.stop).await,
    };
    if reason.is_some() {
        ctx.alive.relay.fetch_sub(1, Ordering::Relaxed);
    }
    reason
}

/// Device `a`: sends `messages` signals to `b`, never more than the window in flight, then
/// keeps reading its socket (for `accepted` and refusals) until `b` is done.
async fn send_side(
    conn: &mut Conn,
    shared: &CoupleShared,
    opts: &RelayOpts,
    deadline: Instant,
) -> (Report, Option<String>) {
    let (mut sent, mut accepted) = (0u64, 0u64);
    let mut refused = Errors::default();
    let mut ended = None;
    let timeout = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timeout);
    let receiver_done = shared.receiver_done.notified();
    tokio::pin!(receiver_done);
    let mut b_done = false;
    // With --rate: each couple on its own phase within the period (from where its shared
    // state sits in memory: arbitrary but spread), so the couples do not send in lockstep.
    let started = tokio::time::Instant::now();
    let phase = opts.every.map_or(Duration::ZERO, |every| {
        every.mul_f64(float(count((std::ptr::from_ref(shared) as usize / 64) % 1000)) / 1000.0)
    });
    let pace = tokio::time::sleep_until(started + phase);
    tokio::pin!(pace);
    let mut paced = opts.every.is_none();
    loop {
        let sending = sent < opts.messages && paced;
        // Once b is done, wait only for the answers still due (with ids or over REST: one per
        // signal).
        if b_done && (!opts.answered || accepted + refused.total() >= sent) {
            break;
        }
        tokio::select! {
            permit = shared.window.acquire(), if sending => {
                let Ok(permit) = permit else { break }; // b is gone
                permit.forget();
                let t = nanos(opts.epoch.elapsed());
                if let Err(e) = conn.send_signal(sent, t, &opts.pad, opts.ids).await {
                    ended = Some(e);
                    break;
                }
                sent += 1;
                if let Some(every) = opts.every {
                    pace.as_mut().reset(started + phase + every * u32::try_from(sent).unwrap_or(u32::MAX));
                    paced = false;
                }
            }
            () = &mut pace, if !paced => paced = true,
            event = conn.next_event() => match event {
                Ok(Event::Accepted) => accepted += 1,
                Ok(Event::Error(code)) => {
                    // A refused signal never reaches b: free its window slot.
                    refused.add(code);
                    shared.not_coming.fetch_add(1, Ordering::Relaxed);
                    shared.window.add_permits(1);
                }
                Ok(Event::Malformed(e)) => refused.add(e),
                Ok(_) => {}
                Err(reason) => {
                    ended = Some(reason);
                    break;
                }
            },
            () = &mut receiver_done, if !b_done => b_done = true,
            () = &mut timeout => break,
        }
    }
    shared
        .not_coming
        .fetch_add(opts.messages - sent, Ordering::Relaxed);
    (
        Report::Sender {
            sent,
            accepted,
            refused,
        },
        ended,
    )
}

/// Device `b`: receives until every signal arrived or will not come, or the deadline (set
/// with "go"). Starts as soon as `b` joined; an incomplete couple is released by `run`, which
/// marks all its signals as not coming.
async fn receive_side(
    conn: &mut Conn,
    shared: &CoupleShared,
    opts: &RelayOpts,
    go: &watch::Receiver<Option<Instant>>,
) -> (Report, Option<String>) {
    let mut tally = Tally {
        latencies_ns: Vec::with_capacity(usize::try_from(opts.messages).unwrap_or(0)),
        ..Tally::default()
    };
    let mut ended = None;
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while tally.received + shared.not_coming.load(Ordering::Relaxed) < opts.messages {
        tokio::select! {
            event = conn.next_event() => match event {
                Ok(Event::Signal { probe, seq }) => {
                    tally.on_signal(&probe, seq, nanos(opts.epoch.elapsed()));
                    shared.window.add_permits(1);
                    if tally.received.is_multiple_of(opts.ack_every)
                        && let Err(e) = tally.ack(conn, false).await
                    {
                        ended = Some(e);
                        break;
                    }
                }
                Ok(Event::Error(code)) => tally.other_errors.add(code),
                Ok(Event::Malformed(e)) => tally.other_errors.add(e),
                Ok(_) => {} // peer-joined, peer-left
                Err(reason) => {
                    ended = Some(reason);
                    break;
                }
            },
            _ = recheck.tick() => {
                let deadline = *go.borrow();
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    tally.timed_out = true;
                    break;
                }
            }
        }
    }
    // Free a sender still waiting on the window (timeout, disconnect).
    shared.window.close();
    shared.receiver_done.notify_one();
    if !shared.active.load(Ordering::Relaxed) && tally.received == 0 {
        return (Report::Skipped, ended);
    }
    if ended.is_none()
        && tally.acked_seq != tally.last_seq
        && let Err(e) = tally.ack(conn, true).await
    {
        ended = Some(e);
    }
    if let Some(polls) = conn.polls() {
        tally.acks += polls.acks;
        tally.polls = Some(polls);
    }
    (Report::Receiver(tally), ended)
}

/// One idle socket, from its join to the end of the run.
async fn idle_socket(
    conn: Conn,
    mut stop: watch::Receiver<bool>,
    alive: Arc<Alive>,
) -> Option<String> {
    alive.idle.fetch_add(1, Ordering::Relaxed);
    let reason = hold(conn, &mut stop).await;
    if reason.is_some() {
        alive.idle.fetch_sub(1, Ordering::Relaxed);
    }
    reason
}

// ---------------------------------------------------------------------------------------------
// Phase 3 results
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct RelayPhase {
    couples: usize,
    expected: u64,
    sent: u64,
    accepted: u64,
    received: u64,
    out_of_order: u64,
    duplicates: u64,
    acks: u64,
    /// REST: how the receivers polled, all together.
    polls: Option<Polling>,
    timed_out: u64,
    lost_before_start: u64,
    elapsed: Duration,
    latency: Percentiles,
    /// Where `b` saw signals missing, by how far the seq moved across the hole.
    gaps: Errors,
    errors: Errors,
}

impl RelayPhase {
    fn rate(&self) -> f64 {
        per_sec(self.received, self.elapsed)
    }

    /// REST: the receivers' fetches, the empty ones, and fetches per signal received.
    fn polls_row(&self, table: &mut Table) {
        if let Some(p) = self.polls {
            let per_signal = float(p.polls) / float(self.received.max(1));
            table.row(
                "relay",
                "polls by b (empty) / signal",
                format!("{} ({}) / {per_signal:.2}", p.polls, p.empty),
            );
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.total()
            + self.expected.saturating_sub(self.received)
            + self.out_of_order
            + self.duplicates
            + self.lost_before_start
    }

    fn to_json(&self) -> Value {
        json!({
            "couples": self.couples,
            "expected": self.expected,
            "sent": self.sent,
            "accepted": self.accepted,
            "received": self.received,
            "missing": self.expected.saturating_sub(self.received),
            "out_of_order": self.out_of_order,
            "duplicates": self.duplicates,
            "acks": self.acks,
            "polls": self.polls.map(|p| p.polls),
            "empty_polls": self.polls.map(|p| p.empty),
            "receivers_timed_out": self.timed_out,
            "sockets_lost_before_start": self.lost_before_start,
            "gaps": self.gaps.to_json(),
            "elapsed_ms": self.elapsed.as_millis(),
            "msgs_per_sec": round1(self.rate()),
            "latency_us": self.latency.micros_json(),
            "errors": self.errors.to_json(),
        })
    }
}

async fn collect_relay(
    reports: Vec<oneshot::Receiver<Report>>,
    go_at: Instant,
    active: usize,
    messages: u64,
) -> RelayPhase {
    let mut phase = RelayPhase {
        couples: active,
        expected: count(active) * messages,
        ..RelayPhase::default()
    };
    let mut latencies = Vec::with_capacity(usize::try_from(phase.expected).unwrap_or(0));
    let mut finished = go_at;
    for rx in reports {
        match rx.await {
            Ok(Report::Skipped) => {}
            Ok(Report::Lost) => phase.lost_before_start += 1,
            Ok(Report::Sender {
                sent,
                accepted,
                refused,
            }) => {
                phase.sent += sent;
                phase.accepted += accepted;
                for (k, n) in refused.0 {
                    *phase
                        .errors
                        .0
                        .entry(format!("signal refused: {k}"))
                        .or_default() += n;
                }
            }
            Ok(Report::Receiver(t)) => {
                latencies.extend(t.latencies_ns);
                phase.received += t.received;
                phase.out_of_order += t.out_of_order;
                phase.duplicates += t.duplicates;
                phase.acks += t.acks;
                if let Some(p) = t.polls {
                    phase.polls = Some(phase.polls.unwrap_or_default() + p);
                }
                phase.timed_out += u64::from(t.timed_out);
                if let Some(at) = t.last_receipt {
                    finished = finished.max(at);
                }
                phase.gaps.merge(t.gaps);
                phase.errors.merge(t.other_errors);
            }
            Err(_) => phase.errors.add("relay task died without a report"),
        }
    }
    phase.elapsed = finished.saturating_duration_since(go_at);
    phase.latency = Percentiles::of(latencies);
    phase
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", float(ns) / 1e6)
}

fn us(ns: u64) -> String {
    format!("{} us", ns / 1_000)
}

/// A plain-text table: phase, metric, value.
#[derive(Default)]
struct Table(String);

impl Table {
    fn row(&mut self, phase: &str, metric: &str, value: impl std::fmt::Display) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "{phase:<10} {metric:<34} {value}");
    }
}

fn join_rows<T>(table: &mut Table, phase: &str, j: &JoinPhase<T>) {
    let p = Percentiles::of(j.latencies_ns.clone());
    table.row(
        phase,
        "sockets joined / attempted",
        format!(
            "{} / {} ({} errors)",
            j.joined.len(),
            j.attempted,
            j.errors.total()
        ),
    );
    table.row(
        phase,
        "setup rate (connect+join)",
        format!("{:.1} joins/s", j.rate()),
    );
    table.row(
        phase,
        "join latency p50 / p99",
        format!("{} / {}", ms(p.p50), ms(p.p99)),
    );
    table.row(phase, "join latency max", ms(p.max));
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn warn_about_window(args: &Args) {
    // Over REST, `b` acknowledges a fetch's signals with the next fetch, so up to a window
    // of signals received waits for it, next to a window in flight.
    let (what, in_mailbox) = match args.transport {
        Transport::Rest { .. } => ("2 * --window", 2 * args.window),
        _ => ("--window + --ack-every", args.window + args.ack_every),
    };
    if in_mailbox > MAILBOX_SIGNALS {
        eprintln!(
            "warning: {what} = {in_mailbox} exceeds the default mailbox bound of \
             {MAILBOX_SIGNALS} signals; expect `mailbox_full` refusals"
        );
    }
    // The server counts the payload: the pad plus under 64 bytes of `{"n":..,"t":..,"pad":""}`.
    let bytes = in_mailbox * (args.payload_bytes + 64);
    if bytes > MAILBOX_BYTES {
        eprintln!(
            "warning: ({what}) * --payload-bytes is about {bytes} bytes, over the \
             default mailbox bound of {MAILBOX_BYTES} bytes; expect `mailbox_full` refusals"
        );
    }
}

/// Runs every phase; returns the number of errors counted.
#[allow(clippy::too_many_lines)] // one straight sequence of phases reads best in one place
async fn run(args: Args) -> Result<u64, String> {
    let mut target = parse_target(&args.url)?;
    if let Some(url_b) = &args.url_b {
        target.b = Some(Box::new(parse_target(url_b)?));
    }
    let target = Arc::new(target);
    check_fd_limits(&args);
    warn_about_window(&args);
    let client = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let rss = || sum_over(&args.server_pids, |p| rss_kib(*p));
    let server_ticks = || sum_over(&args.server_pids, |p| cpu_ticks(&p.to_string()));
    let ticks_per_sec = clock_ticks_per_sec();
    let run_started = Instant::now();
    let mut table = Table::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let alive = Arc::new(Alive::default());
    let rss_start = rss();

    // Phase 1: pairing.
    eprintln!("pairing {} couples...", args.couples);
    let pair = pair_many(&client, &target.base, args.couples, args.concurrency).await;
    pair.errors.report("pairing");
    table.row(
        "pairing",
        "couples paired / attempted",
        format!(
            "{} / {} ({} errors)",
            pair.couples.len(),
            pair.attempted,
            pair.errors.total()
        ),
    );
    table.row("pairing", "rate", format!("{:.1} pairings/s", pair.rate()));
    let pair_json = pair.to_json();
    let couples = Arc::new(pair.couples);
    let pair_errors = pair.errors.total();

    // Phase 2: connect and join both devices; each socket task then waits for "go".
    let shared: Arc<Vec<Arc<CoupleShared>>> = Arc::new(
        (0..couples.len())
            .map(|_| {
                Arc::new(CoupleShared {
                    window: Semaphore::new(args.window),
                    not_coming: AtomicU64::new(0),
                    active: AtomicBool::new(false),
                    receiver_done: Notify::new(),
                })
            })
            .collect(),
    );
    let opts = Arc::new(RelayOpts {
        messages: count(args.messages),
        ack_every: count(args.ack_every),
        ids: args.ids,
        answered: args.ids || matches!(args.transport, Transport::Rest { .. }),
        pad: "x".repeat(args.payload_bytes),
        epoch: Instant::now(),
        every: (args.rate > 0).then(|| {
            Duration::from_secs_f64(float(count(couples.len())) / float(count(args.rate)))
        }),
    });
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    eprintln!("joining {} sockets...", 2 * couples.len());
    let join = {
        let (shared, opts, stop_rx, alive) = (
            Arc::clone(&shared),
            Arc::clone(&opts),
            stop_rx.clone(),
            Arc::clone(&alive),
        );
        join_all(
            &target,
            args.transport,
            &couples,
            2 * couples.len(),
            false,
            args.concurrency,
            move |c, dev, conn| {
                let (report, report_rx) = oneshot::channel();
                let ctx = RelayCtx {
                    shared: Arc::clone(&shared[c]),
                    opts: Arc::clone(&opts),
                    go: go_rx.clone(),
                    stop: stop_rx.clone(),
                    report,
                    alive: Arc::clone(&alive),
                };
                (tokio::spawn(relay_socket(conn, dev, ctx)), report_rx)
            },
        )
        .await
    };
    join.errors.report("join");
    join_rows(&mut table, "join", &join);

    // Phase 3: relay in every couple whose two devices joined.
    let mut both = vec![0u8; couples.len()];
    for (c, _, _) in &join.joined {
        both[*c] += 1;
    }
    let mut active = 0;
    for (c, n) in both.iter().enumerate() {
        if *n == 2 {
            shared[c].active.store(true, Ordering::Relaxed);
            active += 1;
        } else {
            // Releases a `b` that joined without its `a`.
            shared[c].not_coming.store(opts.messages, Ordering::Relaxed);
        }
    }
    eprintln!(
        "relaying {} signals in each of {active} couples...",
        args.messages
    );
    let cpu_now = || (server_ticks(), cpu_ticks("self"));
    let (server_cpu_before, client_cpu_before) = cpu_now();
    let go_at = Instant::now();
    // Receivers still on the air stop waiting at the deadline. Only the receivers listen, so
    // a send error just means every socket task is gone already.
    let _ = go_tx.send(Some(go_at + args.timeout));
    let mut relay_tasks: Vec<JoinHandle<Option<String>>> = Vec::with_capacity(join.joined.len());
    let mut reports = Vec::with_capacity(join.joined.len());
    let join_json = join.to_json();
    let join_errors = join.errors.total();
    for (_, _, (task, report)) in join.joined {
        relay_tasks.push(task);
        reports.push(report);
    }
    let relay = collect_relay(reports, go_at, active, opts.messages).await;
    let (server_cpu_after, client_cpu_after) = cpu_now();
    let cpu = RelayCpu {
        ticks_per_sec: clock_ticks_per_sec(),
        server_ticks: server_cpu_after
            .zip(server_cpu_before)
            .map(|(a, b)| a.saturating_sub(b)),
        client_ticks: client_cpu_after
            .zip(client_cpu_before)
            .map(|(a, b)| a.saturating_sub(b)),
    };
    relay.errors.report("relay");
    relay.gaps.report("relay gap");
    table.row(
        "relay",
        "signals received / expected",
        format!(
            "{} / {} ({} couples, {} sent)",
            relay.received, relay.expected, relay.couples, relay.sent
        ),
    );
    if opts.answered {
        table.row("relay", "accepted by the server", relay.accepted);
    }
    table.row(
        "relay",
        "missing / out of order / duplicate",
        format!(
            "{} / {} / {}",
            relay.expected.saturating_sub(relay.received),
            relay.out_of_order,
            relay.duplicates
        ),
    );
    table.row("relay", "throughput", format!("{:.1} msgs/s", relay.rate()));
    relay.polls_row(&mut table);
    table.row(
        "relay",
        "latency p50 / p90 / p99",
        format!(
            "{} / {} / {}",
            us(relay.latency.p50),
            us(relay.latency.p90),
            us(relay.latency.p99)
        ),
    );
    table.row(
        "relay",
        "latency max / mean",
        format!("{} / {}", us(relay.latency.max), us(relay.latency.mean)),
    );
    cpu.row(
        &mut table,
        "server CPU per message",
        cpu.server_ticks,
        relay.received,
    );
    cpu.row(
        &mut table,
        "load generator CPU per message",
        cpu.client_ticks,
        relay.received,
    );
    let rss_after_relay = rss();

    // Phase 4: idle sockets.
    let mut idle_tasks: Vec<JoinHandle<Option<String>>> = Vec::new();
    let mut idle_json = Value::Null;
    let mut idle_errors = 0;
    let (mut rss_before_idle, mut rss_idle_joined, mut rss_after_hold) = (None, None, None);
    if args.idle > 0 {
        let extra = if args.idle_alone {
            args.idle
        } else {
            args.idle.div_ceil(2)
        };
        eprintln!("pairing {extra} couples for idle sockets...");
        let pair = pair_many(&client, &target.base, extra, args.concurrency).await;
        pair.errors.report("idle pairing");
        table.row(
            "idle",
            "couples paired / attempted",
            format!(
                "{} / {} ({} errors)",
                pair.couples.len(),
                pair.attempted,
                pair.errors.total()
            ),
        );
        table.row(
            "idle",
            "pairing rate",
            format!("{:.1} pairings/s", pair.rate()),
        );
        let idle_pair_json = pair.to_json();
        idle_errors += pair.errors.total();
        let idle_couples = Arc::new(pair.couples);
        rss_before_idle = rss();
        eprintln!("joining {} idle sockets...", args.idle);
        let join = {
            let (stop_rx, alive) = (stop_rx.clone(), Arc::clone(&alive));
            join_all(
                &target,
                args.transport,
                &idle_couples,
                args.idle,
                args.idle_alone,
                args.concurrency,
                move |_, _, conn| {
                    tokio::spawn(idle_socket(conn, stop_rx.clone(), Arc::clone(&alive)))
                },
            )
            .await
        };
        join.errors.report("idle join");
        join_rows(&mut table, "idle", &join);
        idle_errors += join.errors.total();
        tokio::time::sleep(SETTLE).await;
        rss_idle_joined = rss();
        let per_conn = match (rss_before_idle, rss_idle_joined) {
            (Some(before), Some(after)) if !join.joined.is_empty() => {
                let kib = float(after.saturating_sub(before)) / float(count(join.joined.len()));
                table.row(
                    "idle",
                    "server RSS before / after join",
                    format!("{before} KiB / {after} KiB"),
                );
                table.row(
                    "idle",
                    "server RSS per idle socket",
                    format!("{kib:.1} KiB"),
                );
                Some(round1(kib))
            }
            _ => None,
        };
        let hold_started = (Instant::now(), server_ticks());
        if !args.hold.is_zero() {
            eprintln!("holding every socket open for {:?}...", args.hold);
            tokio::time::sleep(args.hold).await;
        }
        let hold_cpu = match (hold_started.1, server_ticks()) {
            (Some(before), Some(after)) if !args.hold.is_zero() => {
                let busy = float(after.saturating_sub(before)) / float(ticks_per_sec);
                let percent = 100.0 * busy / hold_started.0.elapsed().as_secs_f64();
                table.row(
                    "idle",
                    "server CPU during hold",
                    format!("{percent:.2} % of a core"),
                );
                Some(round1(percent * 10.0) / 10.0)
            }
            _ => None,
        };
        rss_after_hold = rss();
        let (alive_relay, alive_idle) = (
            alive.relay.load(Ordering::Relaxed),
            alive.idle.load(Ordering::Relaxed),
        );
        table.row(
            "idle",
            &format!("open after {}s hold: relay / idle", args.hold.as_secs()),
            format!(
                "{alive_relay} / {} , {alive_idle} / {}",
                relay_tasks.len(),
                join.joined.len()
            ),
        );
        if let Some(kib) = rss_after_hold {
            table.row("idle", "server RSS after hold", format!("{kib} KiB"));
        }
        idle_json = json!({
            "pairing": idle_pair_json,
            "join": join.to_json(),
            "server_rss_kib_before": rss_before_idle,
            "server_rss_kib_joined": rss_idle_joined,
            "server_rss_kib_after_hold": rss_after_hold,
            "server_kib_per_idle_socket": per_conn,
            "hold_secs": args.hold.as_secs(),
            "alone": args.idle_alone,
            "server_cpu_percent_during_hold": hold_cpu,
            "open_after_hold": { "relay": alive_relay, "idle": alive_idle },
        });
        idle_tasks = join.joined.into_iter().map(|(_, _, task)| task).collect();
    }

    // Close everything and collect unexpected disconnects.
    eprintln!(
        "closing {} sockets...",
        relay_tasks.len() + idle_tasks.len()
    );
    // Every socket task holds a receiver until it ends; a send error means all have ended.
    let _ = stop_tx.send(true);
    let mut disconnects = Errors::default();
    let closing = async {
        for (kind, tasks) in [("relay", relay_tasks), ("idle", idle_tasks)] {
            for task in tasks {
                match task.await {
                    Ok(Some(reason)) => disconnects.add(format!("{kind} socket: {reason}")),
                    Ok(None) => {}
                    Err(e) => disconnects.add(format!("{kind} socket task died: {e}")),
                }
            }
        }
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        disconnects.add("sockets still closing after the close timeout");
    }
    disconnects.report("socket");
    table.row("run", "unexpected disconnects", disconnects.total());
    table.row(
        "run",
        "total time",
        format!("{:.1} s", run_started.elapsed().as_secs_f64()),
    );
    if let Some(kib) = rss() {
        table.row(
            "run",
            "server RSS start / end",
            format!("{} / {kib} KiB", rss_start.unwrap_or(0)),
        );
    }
    let errors =
        pair_errors + join_errors + relay.error_count() + idle_errors + disconnects.total();
    table.row("run", "errors (all kinds)", errors);

    println!("Our Memories load generator: {}", target.base);
    println!(
        "couples={} concurrency={} messages={} payload-bytes={} window={} ack-every={} idle={} \
         hold-secs={} ids={} server-pid={} transport={} poll-ms={}",
        args.couples,
        args.concurrency,
        args.messages,
        args.payload_bytes,
        args.window,
        args.ack_every,
        args.idle,
        args.hold.as_secs(),
        args.ids,
        if args.server_pids.is_empty() {
            "-".to_owned()
        } else {
            args.server_pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        args.transport.name(),
        args.transport
            .poll_ms()
            .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
    );
    println!();
    print!("{}", table.0);
    println!();
    let summary = json!({
        "target": target.base,
        "args": {
            "couples": args.couples,
            "concurrency": args.concurrency,
            "messages": args.messages,
            "payload_bytes": args.payload_bytes,
            "window": args.window,
            "ack_every": args.ack_every,
            "idle": args.idle,
            "hold_secs": args.hold.as_secs(),
            "timeout_secs": args.timeout.as_secs(),
            "ids": args.ids,
            "server_pids": args.server_pids,
            "url_b": args.url_b,
            "transport": args.transport.name(),
            "poll_ms": args.transport.poll_ms(),
        },
        "pairing": pair_json,
        "join": join_json,
        "relay": relay.to_json(),
        "relay_cpu": cpu.to_json(relay.received),
        "idle": idle_json,
        "server_rss_kib": {
            "start": rss_start,
            "after_relay": rss_after_relay,
            "before_idle": rss_before_idle,
            "idle_joined": rss_idle_joined,
            "after_hold": rss_after_hold,
            "end": rss(),
        },
        "disconnects": disconnects.to_json(),
        "errors_total": errors,
        "elapsed_ms": run_started.elapsed().as_millis(),
    });
    println!("{summary}");
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
        let one = Percentiles::of(vec![7]);
        assert_eq!((one.p50, one.p99, one.max), (7, 7, 7));
    }

    #[test]
    fn only_loopback_targets() {
        assert!(parse_target("http://127.0.0.1:3000").is_ok());
        assert!(parse_target("http://localhost:8080/").is_ok());
        assert_eq!(
            parse_target("http://[::1]:9").map(|t| t.ws_url).ok(),
            Some("ws://[::1]:9/ws".to_owned())
        );
        assert!(parse_target("http://example.com:3000").is_err());
        assert!(parse_target("https://127.0.0.1:3000").is_err());
    }

    #[test]
    fn flags_parse() {
        let argv = ["--couples=5", "--idle", "0", "--server-pid", "42,43"].map(str::to_owned);
        let Ok(Command::Run(a)) = parse_args(argv) else {
            panic!("flags did not parse")
        };
        assert_eq!((a.couples, a.idle, a.server_pids), (5, 0, vec![42, 43]));
        assert!(parse_args(["--server-pid", "42,x"].map(str::to_owned)).is_err());
        assert!(parse_args(["--window", "0"].map(str::to_owned)).is_err());
        assert!(parse_args(["--bogus", "1"].map(str::to_owned)).is_err());
        let Ok(Command::Run(a)) = parse_args(["--transport", "socketio"].map(str::to_owned)) else {
            panic!("--transport did not parse")
        };
        assert_eq!(a.transport, Transport::SocketIo);
        assert!(parse_args(["--transport=polling"].map(str::to_owned)).is_err());
        let rest = ["--transport", "rest", "--idle", "0", "--poll-ms", "2"].map(str::to_owned);
        let Ok(Command::Run(a)) = parse_args(rest) else {
            panic!("--transport rest did not parse")
        };
        assert_eq!(
            a.transport,
            Transport::Rest {
                poll: Duration::from_millis(2)
            }
        );
        // The poll interval may come first; its default is DEFAULT_POLL.
        let Ok(Command::Run(a)) =
            parse_args(["--poll-ms=0", "--idle=0", "--transport=rest"].map(str::to_owned))
        else {
            panic!("--poll-ms before --transport did not parse")
        };
        assert_eq!(a.transport.poll_ms(), Some(0));
        let Ok(Command::Run(a)) = parse_args(["--transport=rest", "--idle=0"].map(str::to_owned))
        else {
            panic!("--transport rest did not parse")
        };
        assert_eq!(a.transport.poll_ms(), Some(DEFAULT_POLL.as_millis()));
        // REST has no idle sockets and no client ids.
        assert!(parse_args(["--transport", "rest"].map(str::to_owned)).is_err());
        assert!(parse_args(["--transport=rest", "--idle=0", "--ids"].map(str::to_owned)).is_err());
    }

    #[test]
    fn rest_answers_decode() {
        use reqwest::StatusCode;
        let page = br#"{"signals":[
            {"id":"i1","seq":16777219,"fromDeviceId":"a","signalPayload":{"n":0,"t":5,"pad":"x"},"createdAt":"2026-01-01T00:00:01.250Z"},
            {"id":"i2","seq":16777220,"fromDeviceId":"a","signalPayload":null,"createdAt":"2026-01-01T00:00:01.251Z"}]}"#;
        let events = fetched_events(StatusCode::OK, page);
        assert!(matches!(
            events.as_slice(),
            [
                Event::Signal {
                    probe: Probe { n: 0, t: 5 },
                    seq: 16_777_219
                },
                Event::Malformed(_)
            ]
        ));
        assert!(fetched_events(StatusCode::OK, br#"{"signals":[]}"#).is_empty());
        assert!(matches!(
            fetched_events(StatusCode::OK, b"{").as_slice(),
            [Event::Malformed(_)]
        ));
        let limited = br#"{"error":{"code":"rate_limited","message":"too many requests"}}"#;
        assert!(matches!(
            fetched_events(StatusCode::TOO_MANY_REQUESTS, limited).as_slice(),
            [Event::Error(e)] if e == "HTTP 429 rate_limited"
        ));
        assert_eq!(rest_error(StatusCode::BAD_GATEWAY, b"<html>"), "HTTP 502");
    }

    #[test]
    fn socketio_packets_decode() {
        let signal = r#"42["webrtc-signal",{"from":"a","payload":{"n":3,"t":9,"pad":"x"},"seq":7,"id":"k"}]"#;
        assert!(matches!(
            sio_event(signal),
            Ok(Event::Signal {
                probe: Probe { n: 3, t: 9 },
                seq: 7
            })
        ));
        let joined = r#"42["joined",{"coupleId":"c","deviceId":"a","peers":[],"recovered":false}]"#;
        assert!(matches!(sio_event(joined), Ok(Event::Joined)));
        assert!(matches!(
            sio_event(r#"4312[{"id":"s12","seq":5}]"#),
            Ok(Event::Accepted)
        ));
        assert!(matches!(
            sio_event(r#"431[{"error":{"code":"mailbox_full","message":"m"}}]"#),
            Ok(Event::Error(code)) if code == "mailbox_full"
        ));
        assert!(matches!(
            sio_event(r#"42["error",{"code":"not_joined","message":"m"}]"#),
            Ok(Event::Error(code)) if code == "not_joined"
        ));
        assert!(matches!(
            sio_event(r#"44{"message":"invalid_token"}"#),
            Ok(Event::Error(code)) if code == "invalid_token"
        ));
        assert!(matches!(
            sio_event(r#"0{"sid":"x","pingInterval":5000}"#),
            Ok(Event::Other)
        ));
        assert!(matches!(sio_event(r#"40{"sid":"y"}"#), Ok(Event::Other)));
        assert!(matches!(
            sio_event(r#"42["peer-left",{"deviceId":"a"}]"#),
            Ok(Event::Other)
        ));
        assert!(matches!(sio_event("42[oops"), Ok(Event::Malformed(_))));
        assert!(sio_event("41").is_err());
        assert!(sio_event("1").is_err());
    }

    #[test]
    fn proc_stat_cpu_is_read() {
        assert!(cpu_ticks("self").is_some());
        assert!(clock_ticks_per_sec() > 0);
    }
}
