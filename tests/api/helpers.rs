//! `TestApp`: a real server per test (own data directory, port 0, manual clock), and thin
//! clients for every endpoint.

use std::time::Duration;

use std::sync::Arc;

use actors::{BlobStore, Clock, CoupleId, Rooms, SigningSecret};
use futures_util::{SinkExt, StreamExt};
use our_memories::app::App;
use our_memories::config::S3Settings;
use our_memories::config::{BlobBackend, ClusterConfig, Config, MetadataBackend, SecretSource};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for any single expected event; a hang fails the test instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(10);

/// Logs go to stdout only when `TEST_LOG` is set.
fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// `METRICS_ADDR`'s listener, when the test configured one.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub clock: Clock,
    pub rooms: Rooms,
    pub pairing: actors::Pairing,
    pub backups: actors::Backups,
    pub blobs: Arc<dyn BlobStore>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    data: tempfile::TempDir,
    /// In cluster mode, the second instance; requests and sockets alternate between them.
    peer: Option<Peer>,
    turn: std::sync::atomic::AtomicUsize,
}

/// The second instance of a cluster-mode test app.
struct Peer {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _data: tempfile::TempDir,
}

/// Builds an app and runs it until the returned sender fires.
async fn run_app(
    config: Config,
    clock: &Clock,
) -> (App, oneshot::Sender<()>, impl FnOnce(App) -> JoinHandle<()>) {
    let app = App::build(config, clock.clone())
        .await
        .expect("server starts");
    let (stop, stopped) = oneshot::channel::<()>();
    let run = move |app: App| {
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }))
    };
    (app, stop, run)
}

#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct Couple {
    pub id: String,
    pub a: Device,
    pub b: Device,
}

/// Which storage the HTTP tests run against: `OM_TEST_BACKEND` = `embedded` (default),
/// `mongodb` (MongoDB + GridFS), `s3` (MongoDB + S3) or `cluster` (two instances on MongoDB +
/// GridFS + Redis, requests spread across them), with the services `.ci/test` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Mongo,
    MongoS3,
    Cluster,
}

impl Backend {
    pub fn from_env() -> Self {
        match std::env::var("OM_TEST_BACKEND").as_deref() {
            Err(_) | Ok("" | "embedded") => Self::Embedded,
            Ok("mongodb") => Self::Mongo,
            Ok("s3") => Self::MongoS3,
            Ok("cluster") => Self::Cluster,
            Ok(other) => {
                panic!("OM_TEST_BACKEND={other}: expected embedded, mongodb, s3 or cluster")
            }
        }
    }

    /// Whether the test app is two instances (a rule of one process cannot be checked).
    pub fn is_cluster() -> bool {
        Self::from_env() == Self::Cluster
    }
}

/// Returns early (a loud skip) from a test of something that is per instance by design (a
/// count, a limit, a room's lifecycle), when the app is a cluster.
#[macro_export]
macro_rules! single_instance_only {
    ($why:literal) => {
        if $crate::helpers::Backend::is_cluster() {
            eprintln!(concat!("SKIPPED in cluster mode: ", $why));
            return;
        }
    };
}

/// A service address from the environment. Missing is a failure under CI, and a loud skip
/// (`None`) on a developer machine that has not started the services.
pub fn service_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set: .ci/test starts the test services; CI never skips them")
        }
        _ => {
            eprintln!("SKIPPED: {var} is not set (run .ci/test to start the test services)");
            None
        }
    }
}

/// A command-line tool the tests run (`promtool`, `prometheus`): `.ci/test` installs them.
/// Missing is a failure under CI and a loud skip (`None`) elsewhere, like [`service_env`].
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "{name} is not installed: .ci/test installs it; CI never skips it"
        );
        eprintln!("SKIPPED: {name} is not installed (.ci/test installs it)");
    }
    found
}

/// A fresh name for a database or bucket of one test: nextest runs each test in its own
/// process, so the pid plus a per-process counter is unique within a run.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{:x}-{n:x}-{nanos:x}", std::process::id())
        .replace('-', if prefix.contains('_') { "_" } else { "-" })
}

pub fn s3_settings(bucket: &str) -> Option<S3Settings> {
    Some(S3Settings {
        bucket: bucket.to_owned(),
        region: service_env("OM_TEST_S3_REGION")?,
        access_key: service_env("OM_TEST_S3_ACCESS_KEY")?,
        secret_key: service_env("OM_TEST_S3_SECRET_KEY")?,
        session_token: None,
        endpoint: Some(service_env("OM_TEST_S3_ENDPOINT")?),
    })
}

/// Creates a bucket (the server only checks that it exists).
pub async fn create_bucket(settings: &S3Settings) {
    our_memories::store::s3::client(settings, Duration::from_secs(10))
        .create_bucket()
        .bucket(&settings.bucket)
        .send()
        .await
        .expect("test bucket is created");
}

/// A test configuration: defaults, loopback port 0, its own data directory, secret, database
/// and bucket.
pub async fn test_config(data_dir: &std::path::Path, backend: Backend) -> Config {
    let mut c = Config::from_vars(|_| None).expect("defaults are valid");
    c.addr = "127.0.0.1:0".parse().expect("valid address");
    data_dir.clone_into(&mut c.data_dir);
    c.secret = SecretSource::Env(SigningSecret::generate());
    if backend != Backend::Embedded {
        let uri = service_env("OM_TEST_MONGODB_URI").expect("MongoDB for this backend");
        c.storage.metadata = MetadataBackend::Mongo {
            uri: our_memories::config::Secret::new(uri),
            database: Some(unique_name("om_test_")),
        };
    }
    if backend == Backend::MongoS3 {
        let s3 = s3_settings(&unique_name("om-test-")).expect("S3 for this backend");
        create_bucket(&s3).await;
        c.storage.blobs = BlobBackend::S3(s3);
    }
    if backend == Backend::Cluster {
        let url = service_env("OM_TEST_REDIS_URL").expect("Redis for this backend");
        c.cluster = Some(ClusterConfig {
            url: our_memories::config::Secret::new(url),
            prefix: unique_name("om"),
            instance: "i0".to_owned(),
        });
    }
    c
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        init_logs();
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(data.path(), Backend::from_env()).await;
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let clock = Clock::manual();
        let peer = match &config.cluster {
            None => None,
            Some(cluster) => {
                let data = tempfile::tempdir().expect("temp dir");
                let mut second = config.clone();
                data.path().clone_into(&mut second.data_dir);
                second.metrics.addr = None;
                if let Some(c) = &mut second.cluster {
                    c.instance = format!("{}-peer", cluster.instance);
                }
                let (app, stop, run) = run_app(second, &clock).await;
                Some(Peer {
                    addr: app.addr(),
                    stop: Some(stop),
                    server: Some(run(app)),
                    _data: data,
                })
            }
        };
        let (app, stop, run) = run_app(config, &clock).await;
        let addr = app.addr();
        let metrics_addr = app.metrics_addr();
        let rooms = app.rooms();
        let blobs = app.blobs();
        let (pairing, backups) = (app.pairing(), app.backups());
        let server = run(app);
        Self {
            addr,
            metrics_addr,
            clock,
            rooms,
            pairing,
            backups,
            blobs,
            http: reqwest::Client::new(),
            stop: Some(stop),
            server: Some(server),
            data,
            peer,
            turn: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The instance the next request or socket goes to: in cluster mode they alternate, so
    /// every rule is checked across instances.
    fn next_addr(&self) -> std::net::SocketAddr {
        match &self.peer {
            Some(peer) if self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 1 => {
                peer.addr
            }
            _ => self.addr,
        }
    }

    /// Graceful stop (so every request has finished), then what the blob store holds:
    /// (published-or-not complete blobs, leftovers of unfinished writes).
    pub async fn stop_and_count_blobs(mut self) -> (usize, usize) {
        self.shutdown().await;
        let complete = self.blobs.list().await.expect("list blobs").len();
        let partial = self
            .blobs
            .clean_partial_writes(None)
            .await
            .expect("clean partial writes");
        (complete, partial)
    }

    /// Graceful stop, awaited.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        let peer = self.peer.as_mut().map(|p| (p.stop.take(), p.server.take()));
        for (stop, server) in [(self.stop.take(), self.server.take())]
            .into_iter()
            .chain(peer)
        {
            if let Some(s) = stop {
                let _ = s.send(());
            }
            if let Some(h) = server {
                tokio::time::timeout(WAIT, h)
                    .await
                    .expect("server stops in time")
                    .expect("server task ends cleanly");
            }
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.next_addr())
    }

    pub async fn initiate(&self, device: &str, bearer: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("/api/pair/initiate"))
            .json(&json!({ "deviceId": device }));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request sent")
    }

    pub async fn confirm(&self, couple: &str, token: &str, device: &str) -> reqwest::Response {
        self.http
            .post(self.url("/api/pair/confirm"))
            .json(&json!({ "coupleId": couple, "pairingToken": token, "deviceId": device }))
            .send()
            .await
            .expect("request sent")
    }

    /// Opens a pairing for a new couple (device `a`): its couple id and pairing token.
    pub async fn open_pairing(&self) -> (String, String) {
        let started = ok_json(self.initiate("a", None).await, StatusCode::CREATED).await;
        let field = |k: &str| started[k].as_str().expect("pairing field").to_owned();
        (field("coupleId"), field("pairingToken"))
    }

    /// Guesses a pairing's token 5 times: 4 answers are 401 `invalid_pairing_token`, the
    /// fifth burns the pairing (410 `pairing_burned`), after which even the right `token` is
    /// refused the same way.
    pub async fn guess_until_burned(&self, couple: &str, token: &str) {
        for _ in 0..4 {
            assert_error(
                self.confirm(couple, "guess", "b").await,
                StatusCode::UNAUTHORIZED,
                "invalid_pairing_token",
            )
            .await;
        }
        assert_error(
            self.confirm(couple, "guess", "b").await,
            StatusCode::GONE,
            "pairing_burned",
        )
        .await;
        assert_error(
            self.confirm(couple, token, "b").await,
            StatusCode::GONE,
            "pairing_burned",
        )
        .await;
    }

    /// Initiates and confirms: a couple with devices `a` and `b`.
    pub async fn pair(&self) -> Couple {
        let started: Value = ok_json(self.initiate("a", None).await, StatusCode::CREATED).await;
        let couple = started["coupleId"].as_str().expect("coupleId").to_owned();
        let pairing = started["pairingToken"].as_str().expect("pairingToken");
        let confirmed: Value =
            ok_json(self.confirm(&couple, pairing, "b").await, StatusCode::OK).await;
        Couple {
            a: Device {
                id: "a".into(),
                token: started["deviceToken"].as_str().expect("token").to_owned(),
            },
            b: Device {
                id: "b".into(),
                token: confirmed["deviceToken"].as_str().expect("token").to_owned(),
            },
            id: couple,
        }
    }

    /// Adds one more device to a couple (initiate with a member's bearer, then confirm).
    pub async fn add_device(&self, couple: &Couple, id: &str) -> Device {
        let started: Value = ok_json(
            self.initiate("a", Some(&couple.a.token)).await,
            StatusCode::CREATED,
        )
        .await;
        let pairing = started["pairingToken"].as_str().expect("pairingToken");
        let confirmed: Value =
            ok_json(self.confirm(&couple.id, pairing, id).await, StatusCode::OK).await;
        Device {
            id: id.into(),
            token: confirmed["deviceToken"].as_str().expect("token").to_owned(),
        }
    }

    pub async fn post_signal(
        &self,
        couple: &str,
        from: &Device,
        to: &str,
        payload: Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/api/signal"))
            .bearer_auth(&from.token)
            .json(&json!({
                "coupleId": couple, "fromDeviceId": from.id, "toDeviceId": to, "signalPayload": payload
            }))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_signals(
        &self,
        couple: &str,
        device: &str,
        token: Option<&str>,
        after: Option<u64>,
    ) -> reqwest::Response {
        let mut url = self.url(&format!("/api/signals/{couple}/{device}"));
        if let Some(a) = after {
            url = format!("{url}?after={a}");
        }
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request sent")
    }

    pub async fn ws(&self) -> Ws {
        Ws::connect(&self.next_addr().to_string()).await
    }

    /// Connects and joins; returns the socket and the `joined` message.
    pub async fn join(
        &self,
        couple: &Couple,
        device: &Device,
        last_seq: Option<u64>,
    ) -> (Ws, Value) {
        let mut ws = self.ws().await;
        ws.send(join_msg(&couple.id, device, last_seq)).await;
        let joined = ws.recv_type("joined").await;
        (ws, joined)
    }

    pub async fn upload(
        &self,
        device: &Device,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url("/api/backup"))
            .bearer_auth(&device.token)
            .header("content-type", "application/octet-stream")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get_auth(&self, path: &str, device: &Device) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&device.token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn room_failures(&self) -> u64 {
        self.rooms.stats().await.expect("stats").failures
    }

    pub fn couple_id(couple: &Couple) -> CoupleId {
        CoupleId::parse(couple.id.clone()).expect("valid couple id")
    }
}

pub fn join_msg(couple: &str, device: &Device, last_seq: Option<u64>) -> Value {
    let mut m = json!({ "type": "join-couple", "coupleId": couple, "deviceId": device.id, "token": device.token });
    if let Some(s) = last_seq {
        m["lastSeq"] = json!(s);
    }
    m
}

pub fn signal(to: Option<&str>, payload: &Value, id: Option<&str>) -> Value {
    let mut m = json!({ "type": "webrtc-signal", "payload": payload });
    if let Some(t) = to {
        m["to"] = json!(t);
    }
    if let Some(i) = id {
        m["id"] = json!(i);
    }
    m
}

/// Asserts the status and returns the JSON body.
pub async fn ok_json(res: reqwest::Response, status: StatusCode) -> Value {
    let got = res.status();
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(got, status, "body: {body}");
    body
}

/// Asserts an error response: status and code.
pub async fn assert_error(res: reqwest::Response, status: StatusCode, code: &str) {
    let body = ok_json(res, status).await;
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Opens `/ws` on a server at `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket connects");
        Self { stream }
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::text(v.to_string()))
            .await
            .expect("frame sent");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.expect("frame sent");
    }

    /// The next frame that is not a ping/pong, within [`WAIT`].
    pub async fn next_frame(&mut self) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a frame arrives in time");
            match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next JSON message.
    pub async fn recv(&mut self) -> Value {
        match self.next_frame().await {
            Some(Message::Text(t)) => serde_json::from_str(t.as_str()).expect("JSON message"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next message, which must have this `type`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let m = self.recv().await;
        assert_eq!(m["type"], ty, "message: {m}");
        m
    }

    /// The next message must be an error with this code.
    pub async fn recv_error(&mut self, code: &str) -> Value {
        let m = self.recv_type("error").await;
        assert_eq!(m["code"], code, "message: {m}");
        m
    }

    /// The close frame's code, once the server closes.
    pub async fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.next_frame().await {
                Some(Message::Close(frame)) => return frame.map(|f| f.code.into()),
                Some(_) => {}
                None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// Keeps the socket open but never reads it again (it will stop answering pings).
    pub fn into_silent(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }
}

/// Sends raw bytes on a new connection and returns everything the server sends back before
/// it closes the connection (bounded by [`WAIT`]).
pub async fn raw_response(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.expect("server reachable");
    // The server may answer (and close) before reading it all; a failed write is fine.
    let _ = tcp.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Starts an upload on a raw connection: the head and `sent` bytes of a body announced as
/// `announced` bytes, then nothing more (the connection stays open until dropped).
pub async fn partial_upload(
    addr: impl tokio::net::ToSocketAddrs,
    token: &str,
    announced: usize,
    sent: usize,
) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.expect("server reachable");
    let head = format!(
        "POST /api/backup HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {announced}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head sent");
    tcp.write_all(&vec![1u8; sent]).await.expect("body sent");
    tcp
}

/// Waits (bounded by [`WAIT`]) until the embedded store has an unfinished upload in
/// `data_dir` holding at least `min_bytes`: proof that an upload is really in flight.
pub async fn wait_for_partial_upload(data_dir: &std::path::Path, min_bytes: u64) {
    let partial = data_dir.join("blobs/.partial");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !std::fs::read_dir(&partial)
        .expect("partial upload directory")
        .flatten()
        .any(|f| f.metadata().is_ok_and(|m| m.len() >= min_bytes))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no upload in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A service this test owns (a MongoDB-protocol server, a Redis server), on a fixed port so
/// it can be killed and started again on it; killed on drop.
pub struct PrivateServer {
    bin: String,
    args: Vec<String>,
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateServer {
    /// `args` builds the command line for the port it is given.
    pub fn new(bin: &str, args: impl FnOnce(u16) -> Vec<String>) -> Self {
        let port = free_port();
        Self {
            bin: bin.to_owned(),
            args: args(port),
            port,
            child: None,
        }
    }

    /// Starts it and waits (bounded) until it listens, so start-up timing never decides a
    /// test.
    pub fn start(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.bin));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not start listening",
                self.bin
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes it (SIGSTOP; `false`: SIGCONT): it still accepts connections but answers
    /// nothing, as a hung server does.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("started").id().to_string();
        let sig = if paused { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}
