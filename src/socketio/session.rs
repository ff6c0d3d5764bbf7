//! One Socket.IO socket, on namespace `/`. It joins a couple's room like a `/ws` socket (one
//! socket per device across every transport, one mailbox, one seq), and turns the room's
//! events into Socket.IO events. A client event sent with a callback gets exactly one reply
//! through it; without one, failures come as an `error` event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use actors::{
    Connection, CoupleId, DeviceId, Kick, Payload, RoomEvent, RoomLink, Seq, SignalId, Transport,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts, Value as Packet};
use socketioxide::socket::Socket;
use tokio::sync::{mpsc, oneshot};

use crate::front::auth::{parse_bearer, require_access};
use crate::front::error::ApiError;
use crate::front::rate::DeviceLimit;
use crate::front::wire::{check_depth, parse_value};
use crate::metrics::GaugeShare;
use crate::state::AppState;

/// `join-couple`, and the handshake `auth` object: the fields of `/ws`'s join.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinBody {
    couple_id: CoupleId,
    device_id: DeviceId,
    token: String,
    last_seq: Option<Seq>,
}

/// `webrtc-signal`.
#[derive(Debug, Deserialize)]
struct SignalBody {
    to: Option<DeviceId>,
    /// Serialized once, straight into raw JSON, while the event is parsed.
    payload: Box<RawValue>,
    id: Option<SignalId>,
}

/// `ack`.
#[derive(Debug, Deserialize)]
struct AckBody {
    seq: Seq,
}

/// `joined`: the same body as `/ws`'s, without `type`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinedBody<'a> {
    couple_id: &'a CoupleId,
    device_id: &'a DeviceId,
    peers: &'a [DeviceId],
    recovered: bool,
}

/// `webrtc-signal` from the server.
#[derive(Serialize)]
struct SignalOut<'a> {
    from: &'a DeviceId,
    payload: &'a RawValue,
    seq: Seq,
    id: &'a SignalId,
}

/// The body of `error`, and of a failed acknowledgement (under `error`).
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a SignalId>,
}

impl<'a> ErrorBody<'a> {
    fn new(err: &ApiError, id: Option<&'a SignalId>) -> Self {
        err.report();
        Self {
            code: err.code(),
            message: err.public_message(),
            id,
        }
    }
}

/// A failed acknowledgement: `{"error":{"code","message"}}`, as REST errors are shaped.
#[derive(Serialize)]
struct AckError<'a> {
    error: ErrorBody<'a>,
}

/// How to answer one client event: through its callback when it has one, else with an
/// `error` event. Also says whether the event carried binary attachments.
struct Reply {
    ack: Option<AckSender>,
    binary: bool,
}

/// One client event, as it arrived.
struct Incoming {
    event: String,
    body: Option<Value>,
    reply: Reply,
}

/// Where a socket's events queue for its session task.
#[derive(Clone)]
struct Inbox(mpsc::Sender<Incoming>);

/// Events a session holds before the client is too fast for it (then it is disconnected).
const INBOX: usize = 256;

/// Queues the event for the socket's session task, in arrival order. socketioxide runs every
/// handler in a task of its own, so handlers alone would reorder a socket's events (an ICE
/// candidate overtaking its offer); extractors run in order, before that.
struct Queued;

impl FromMessageParts<socketioxide::adapter::LocalAdapter> for Queued {
    type Error = std::convert::Infallible;

    fn from_message_parts(
        s: &Arc<Socket>,
        v: &mut Packet,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        let binary = matches!(v, Packet::Bytes(_))
            || matches!(v, Packet::Str(_, Some(bins)) if !bins.is_empty());
        let event = Event::from_message_parts(s, v, ack_id).map_or_else(|_| String::new(), |e| e.0);
        let ack = AckSender::from_message_parts(s, v, ack_id)?;
        let body = if binary {
            None
        } else {
            TryData::<Value>::from_message_parts(s, v, ack_id)?.0.ok()
        };
        let incoming = Incoming {
            event,
            body,
            reply: Reply {
                ack: ack_id.is_some().then_some(ack),
                binary,
            },
        };
        if let Some(Inbox(inbox)) = s.extensions.get::<Inbox>()
            && inbox.try_send(incoming).is_err()
        {
            // The client sends faster than its session can handle: drop it, as `/ws` does.
            let _ = Arc::clone(s).disconnect();
        }
        Ok(Queued)
    }
}

impl Reply {
    /// No callback: answers go out as events.
    const NONE: Self = Self {
        ack: None,
        binary: false,
    };

    fn wants_ack(&self) -> bool {
        self.ack.is_some()
    }

    /// Answers with `body`, if the client asked for an answer.
    fn ok<T: Serialize + ?Sized>(self, body: &T) {
        if let Some(ack) = self.ack {
            let _ = ack.send(body);
        }
    }

    /// Answers with an error: through the callback, or as an `error` event.
    fn error(self, socket: &SocketRef, err: &ApiError, id: Option<&SignalId>) {
        let body = ErrorBody::new(err, id);
        match self.ack {
            Some(ack) => {
                let _ = ack.send(&AckError { error: body });
            }
            None => {
                let _ = socket.emit("error", &body);
            }
        }
    }
}

/// Membership in a room; dropping it leaves the room and stops the event pump.
struct Joined {
    link: RoomLink,
    couple: CoupleId,
    device: DeviceId,
    pump: tokio::task::AbortHandle,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.link.leave();
        self.pump.abort();
    }
}

#[derive(Default)]
struct Inner {
    joined: Option<Joined>,
    /// Callbacks waiting for the room's answer to a signal, by signal id.
    pending: HashMap<SignalId, Vec<Reply>>,
    /// The callback of the join in progress, answered with the `joined` body.
    join_reply: Option<Reply>,
    /// Bumped on every join and leave, so that an old join deadline does nothing.
    generation: u64,
    /// This socket's share of the connected-sockets gauge, given back at disconnect.
    open: Option<GaugeShare>,
}

/// One connected socket.
struct Session {
    state: AppState,
    socket: SocketRef,
    inner: Mutex<Inner>,
}

/// Handshake `auth` that passed: joined as soon as the socket is connected.
#[derive(Clone)]
struct JoinAtConnect(JoinBody);

/// Why a handshake was refused: its `message` is the error code (socketioxide sends a
/// `connect_error` with a `message` only; it has no `data` field to carry more).
#[derive(Debug)]
struct Refused(&'static str);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Registers namespace `/`: the handshake check, then every socket's handlers.
pub fn register(io: &SocketIo, state: &AppState) {
    let st = state.clone();
    // The session is set up in the middleware, which socketioxide awaits before it sends
    // CONNECT. Its connect handler runs only after CONNECT is sent (an async one in a task
    // of its own), so an event the client sends the moment it is connected could arrive
    // before any handler exists, and socketioxide drops such an event without a word.
    let admit = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let st = st.clone();
        async move {
            authorize(&st, &s, auth.ok()).await?;
            on_connect(&st, &s);
            Ok::<(), Refused>(())
        }
    };
    io.ns("/", (async |_: SocketRef| {}).with(admit));
}

/// A handshake `auth` object that names a couple must hold a token that opens it.
async fn authorize(state: &AppState, s: &SocketRef, auth: Option<Value>) -> Result<(), Refused> {
    let Some(auth) = auth.filter(|a| a.as_object().is_some_and(|o| !o.is_empty())) else {
        return Ok(());
    };
    let check = async {
        let body: JoinBody = parse_value("auth", &auth)?;
        let token = parse_bearer(&format!("Bearer {}", body.token))?;
        let claims = state.pairing.authenticate(&token).await?;
        require_access(&claims, &body.couple_id, Some(&body.device_id))?;
        Ok::<_, ApiError>(body)
    };
    match check.await {
        Ok(body) => {
            s.extensions.insert(JoinAtConnect(body));
            Ok(())
        }
        Err(e) => {
            e.report();
            Err(Refused(e.code()))
        }
    }
}

fn on_connect(state: &AppState, s: &SocketRef) {
    let session = Arc::new(Session {
        inner: Mutex::new(Inner {
            open: Some(state.metrics.socketio_open()),
            ..Inner::default()
        }),
        state: state.clone(),
        socket: s.clone(),
    });
    let (inbox, mut queue) = mpsc::channel(INBOX);
    s.extensions.insert(Inbox(inbox));
    s.on_fallback(async |Queued| {});
    // The socket owns its handlers and the session holds the socket: the handler keeps only
    // a weak reference, and the disconnect closes the inbox, which ends the session's task.
    // Otherwise every socket would leak its session (and the server's shutdown would wait
    // for the shutdown listener inside it).
    let sess = Arc::downgrade(&session);
    s.on_disconnect(async move |s: SocketRef| {
        s.extensions.remove::<Inbox>();
        if let Some(sess) = sess.upgrade() {
            sess.inner().open = None;
            sess.leave();
        }
    });
    let join_at_connect = s.extensions.remove::<JoinAtConnect>();
    let mut shutdown = state.shutdown.listener();
    tokio::spawn(async move {
        // The handshake's join comes first: events the client sends meanwhile wait for it.
        match join_at_connect {
            Some(JoinAtConnect(body)) => session.join(body, Reply::NONE).await,
            None => session.start_join_deadline(),
        }
        loop {
            tokio::select! {
                incoming = queue.recv() => match incoming {
                    Some(incoming) => session.on_event(incoming).await,
                    None => break,
                },
                // Shutdown: disconnect (clients reconnect elsewhere), as `/ws` closes with 1001.
                () = shutdown.recv() => {
                    session.leave();
                    let _ = session.socket.clone().disconnect();
                    break;
                }
            }
        }
    });
}

impl Session {
    /// Handles one client event, in the order the client sent them.
    async fn on_event(self: &Arc<Self>, Incoming { event, body, reply }: Incoming) {
        match event.as_str() {
            "join-couple" => self.on_join(body, reply).await,
            "leave-couple" => {
                if self.limited(None, reply).is_some() {
                    self.leave();
                }
            }
            "webrtc-signal" => self.on_signal(body, reply),
            "ack" => self.on_ack(body, reply),
            _ => {
                if let Some(reply) = self.limited(None, reply) {
                    reply.error(&self.socket, &ApiError::UnknownMessageType, None);
                }
            }
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A joined socket's events count toward its device's budget, like `/ws` messages; an
    /// event over it is answered with `rate_limited` (and `None` is returned).
    fn limited(&self, id: Option<&SignalId>, reply: Reply) -> Option<Reply> {
        let over = self.inner().joined.as_ref().and_then(|j| {
            self.state
                .limits
                .check_device(DeviceLimit::Signal, &j.couple, &j.device)
                .err()
        });
        match over {
            Some(e) => {
                reply.error(&self.socket, &e, id);
                None
            }
            None => Some(reply),
        }
    }

    async fn on_join(self: &Arc<Self>, body: Option<Value>, reply: Reply) {
        let Some(reply) = self.limited(None, reply) else {
            return;
        };
        if reply.binary {
            return reply.error(&self.socket, &ApiError::BinaryFrame, None);
        }
        if self.inner().joined.is_some() {
            return reply.error(&self.socket, &ApiError::AlreadyJoined, None);
        }
        match parse_value::<JoinBody>("join-couple", &body.unwrap_or_default()) {
            Ok(body) => self.join(body, reply).await,
            Err(e) => reply.error(&self.socket, &e, None),
        }
    }

    async fn join(self: &Arc<Self>, body: JoinBody, reply: Reply) {
        let checked = async {
            let token = parse_bearer(&format!("Bearer {}", body.token))?;
            let claims = self.state.pairing.authenticate(&token).await?;
            require_access(&claims, &body.couple_id, Some(&body.device_id))?;
            Ok::<_, ApiError>(())
        };
        if let Err(e) = checked.await {
            return reply.error(&self.socket, &e, None);
        }
        let (events, events_rx) = mpsc::channel(self.state.ws.outbound_queue);
        let mut kicked = None;
        // The pump answers the join with the `joined` body, before the backlog.
        self.inner().join_reply = Some(reply);
        let joined = self
            .state
            .rooms
            .join(&body.couple_id, &body.device_id, body.last_seq, || {
                let (kick, rx) = oneshot::channel();
                kicked = Some(rx);
                Connection {
                    id: self.state.next_conn_id(),
                    events: events.clone(),
                    kick,
                    transport: Transport::SocketIo,
                    // Engine.IO's heartbeat has one period for every socket (§12).
                }
            })
            .await;
        let (link, kicked) = match (joined, kicked) {
            (Ok(link), Some(kicked)) => (link, kicked),
            (Err(e), _) => {
                if let Some(reply) = self.inner().join_reply.take() {
                    reply.error(&self.socket, &e.into(), None);
                }
                return;
            }
            (Ok(_), None) => return,
        };
        let pump = tokio::spawn(Arc::clone(self).pump(events_rx, kicked));
        let mut inner = self.inner();
        inner.generation += 1;
        inner.joined = Some(Joined {
            link,
            couple: body.couple_id,
            device: body.device_id,
            pump: pump.abort_handle(),
        });
    }

    /// Leaves the room (if joined); the time to join again starts now.
    fn leave(self: &Arc<Self>) {
        let left = {
            let mut inner = self.inner();
            inner.generation += 1;
            inner.pending.clear();
            inner.joined.take()
        };
        if left.is_some() && self.socket.connected() {
            self.start_join_deadline();
        }
    }

    /// Disconnects the socket if it has not joined within the join timeout (as `/ws` does
    /// with 4004), unless it joins or leaves again in between.
    fn start_join_deadline(self: &Arc<Self>) {
        let generation = self.inner().generation;
        // Weak: a pending deadline must not keep a closed socket's session (and the
        // server's shutdown) waiting.
        let session = Arc::downgrade(self);
        let timeout = self.state.ws.join_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(session) = session.upgrade() else {
                return;
            };
            let stale = {
                let inner = session.inner();
                inner.generation != generation || inner.joined.is_some()
            };
            if !stale {
                let body = ErrorBody::new(&ApiError::JoinTimeout, None);
                let _ = session.socket.emit("error", &body);
                let _ = session.socket.clone().disconnect();
            }
        });
    }

    fn on_signal(self: &Arc<Self>, body: Option<Value>, reply: Reply) {
        let parsed = parse_value::<SignalBody>("webrtc-signal", &body.unwrap_or_default());
        let id = parsed.as_ref().ok().and_then(|b| b.id.clone());
        let Some(reply) = self.limited(id.as_ref(), reply) else {
            return;
        };
        if reply.binary {
            return reply.error(&self.socket, &ApiError::BinaryFrame, id.as_ref());
        }
        let body = match parsed {
            Ok(body) => body,
            Err(e) => return reply.error(&self.socket, &e, None),
        };
        let payload = match check_depth(&body.payload, "payload") {
            Ok(()) => Payload::new(body.payload),
            Err(e) => return reply.error(&self.socket, &e, id.as_ref()),
        };
        let mut inner = self.inner();
        let Some(joined) = &inner.joined else {
            drop(inner);
            return reply.error(&self.socket, &ApiError::NotJoined, id.as_ref());
        };
        // A callback needs the room's answer, which comes by id: give the signal one.
        let id = match (id, reply.wants_ack()) {
            (Some(id), _) => Some(id),
            (None, true) => Some(SignalId::generate()),
            (None, false) => None,
        };
        if joined.link.send(body.to, payload, id.clone()).is_err() {
            drop(inner);
            return self.room_gone(reply, id.as_ref());
        }
        if let Some(id) = id {
            inner.pending.entry(id).or_default().push(reply);
        }
    }

    fn on_ack(self: &Arc<Self>, body: Option<Value>, reply: Reply) {
        let Some(reply) = self.limited(None, reply) else {
            return;
        };
        let seq = match parse_value::<AckBody>("ack", &body.unwrap_or_default()) {
            Ok(b) => b.seq,
            Err(e) => return reply.error(&self.socket, &e, None),
        };
        let acked = self.inner().joined.as_ref().map(|j| j.link.ack(seq));
        match acked {
            None => reply.error(&self.socket, &ApiError::NotJoined, None),
            Some(Err(_)) => self.room_gone(reply, None),
            Some(Ok(())) => reply.ok(&serde_json::json!({ "seq": seq })),
        }
    }

    /// The room went away under an event: leave, and tell the client to join again.
    fn room_gone(self: &Arc<Self>, reply: Reply, id: Option<&SignalId>) {
        self.leave();
        reply.error(
            &self.socket,
            &ApiError::Room(actors::RoomError::Unavailable),
            id,
        );
    }

    /// Turns the room's events into Socket.IO events until the room drops the socket.
    async fn pump(
        self: Arc<Self>,
        mut events: mpsc::Receiver<RoomEvent>,
        mut kicked: oneshot::Receiver<Kick>,
    ) {
        loop {
            tokio::select! {
                biased;
                kick = &mut kicked => {
                    if let Ok(kick) = kick {
                        let body = ErrorBody::new(&ApiError::Kicked(kick), None);
                        let _ = self.socket.emit("error", &body);
                        let _ = self.socket.clone().disconnect();
                    } else {
                        // The room went away: the client should join again.
                        let gone = ApiError::Room(actors::RoomError::Unavailable);
                        let _ = self.socket.emit("error", &ErrorBody::new(&gone, None));
                        self.leave();
                    }
                    return;
                }
                event = events.recv() => {
                    let Some(event) = event else { return };
                    if !self.deliver(event) {
                        // The socket's own buffer is full: a slow consumer, as on `/ws`.
                        let kicked = ApiError::Kicked(Kick::SlowConsumer);
                        let _ = self.socket.emit("error", &ErrorBody::new(&kicked, None));
                        let _ = self.socket.clone().disconnect();
                        return;
                    }
                }
            }
        }
    }

    /// Emits one room event; false when the socket cannot take it.
    fn deliver(&self, event: RoomEvent) -> bool {
        let emitted = match event {
            RoomEvent::Joined(joined) => {
                let body = JoinedBody {
                    couple_id: &joined.couple,
                    device_id: &joined.device,
                    peers: &joined.peers,
                    recovered: joined.recovered,
                };
                if let Some(reply) = self.inner().join_reply.take() {
                    reply.ok(&body);
                }
                self.socket.emit("joined", &body)
            }
            RoomEvent::PeerJoined(d) => self.socket.emit("peer-joined", &peer(&d)),
            RoomEvent::PeerLeft(d) => self.socket.emit("peer-left", &peer(&d)),
            RoomEvent::Signal {
                signal: s,
                received,
            } => {
                let out = SignalOut {
                    from: &s.from,
                    payload: s.payload.as_raw(),
                    seq: s.seq,
                    id: &s.id,
                };
                let sent = self.socket.emit("webrtc-signal", &out);
                if let (Ok(()), Some(received)) = (&sent, received) {
                    self.state.metrics.domain().signal_written(received);
                }
                sent
            }
            RoomEvent::Accepted(accepted) => {
                let replies = self.inner().pending.remove(&accepted.id);
                for reply in replies.into_iter().flatten() {
                    reply.ok(&serde_json::json!({ "id": accepted.id, "seq": accepted.seq }));
                }
                Ok(())
            }
            RoomEvent::Rejected { id, error } => {
                let error = ApiError::Room(error);
                let replies = id.as_ref().and_then(|id| self.inner().pending.remove(id));
                match replies {
                    Some(replies) => {
                        for reply in replies {
                            reply.error(&self.socket, &error, id.as_ref());
                        }
                        Ok(())
                    }
                    None => self
                        .socket
                        .emit("error", &ErrorBody::new(&error, id.as_ref())),
                }
            }
        };
        emitted.is_ok()
    }
}

fn peer(device: &DeviceId) -> serde_json::Value {
    serde_json::json!({ "deviceId": device })
}
