//! One WebSocket session, in one task: it reads frames, keeps the heartbeat, relays to the
//! room, and writes. Room events wait in a bounded queue; the task takes what is queued (up
//! to [`EVENT_BATCH`]), renders it into the socket's write buffer and flushes once, so a
//! burst of signals costs one write and one wake-up, not one of each per signal. While a
//! flush is pending (the client is not reading) no more events are taken: the queue fills and
//! the room drops the socket as a slow consumer. Leaving the room is tied to a drop guard, so
//! every exit path (close, error, timeout, shutdown) sends `peer-left` to the others.
//!
//! The heartbeat follows presence (docs/protocol.md §5.5): while another device of the couple
//! is connected, a ping every `WS_HEARTBEAT_SECS` and a close after `WS_CLIENT_TIMEOUT_SECS`
//! of silence, so a vanished peer is reported within 10 s; alone in the room (or not joined),
//! nobody watches, so a ping every `WS_ALONE_HEARTBEAT_SECS` only keeps the connection open
//! through proxies and NATs. The session learns who is connected from the events the room
//! sends it anyway (`joined`, `peer-joined`, `peer-left`), so presence costs no extra channel.
//!
//! Per frame the loop only notes the time: the silence timer is re-armed when it fires (to
//! the last frame plus the limit), not on every frame.

use std::pin::Pin;
use std::time::Duration;

use actors::{Connection, Kick, Payload, RoomEvent, RoomLink, Transport};
use futures_util::{Sink, SinkExt, Stream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::protocol::{ClientMsg, ServerMsg};
use crate::front::auth::{parse_bearer, require_access};
use crate::front::error::ApiError;
use crate::front::rate::DeviceLimit;
use crate::state::AppState;

/// Close code when the server shuts down (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a frame that breaks the WebSocket protocol (including invalid UTF-8 text).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a message over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when the same device joined from another socket.
pub const CLOSE_REPLACED: u16 = 4000;
/// Close code when the client read too slowly and its queue filled.
pub const CLOSE_SLOW_CONSUMER: u16 = 4001;
/// Close code when another device of the couple revoked this one.
pub const CLOSE_REVOKED: u16 = 4003;
/// Close code when the client stayed silent past the client timeout.
pub const CLOSE_TIMEOUT: u16 = 4002;
/// Close code when the socket did not join a couple within the join timeout.
pub const CLOSE_JOIN_TIMEOUT: u16 = 4004;
/// The session's own frames (pongs, errors, pings) written while a flush is pending, beyond
/// which the client counts as not reading and is dropped.
const FRAME_QUEUE: usize = 32;
/// Room events taken from the queue into one write.
const EVENT_BATCH: usize = 64;
/// Rendered bytes after which a batch takes no more events; also the socket's write buffer
/// (`write_buffer_size` in `ws.rs`), so a batch under it goes out in one write. tungstenite
/// keeps the buffer's capacity for the socket's life, so this is also what a busy socket
/// holds: 16 KiB relays as fast as 64 KiB did (about 15 one-KiB signals per write) at a
/// quarter of the memory (docs/benchmarks.md, "Write batches").
pub const WRITE_BATCH_BYTES: usize = 16 * 1024;
/// Longest wait for the last frames (a close) to be written after the session ends.
const WRITER_FLUSH: Duration = Duration::from_secs(2);

/// Membership in a room; dropping it leaves the room.
struct Joined {
    link: RoomLink,
    kicked: oneshot::Receiver<Kick>,
    /// Whose budget the socket's messages count against.
    couple: actors::CoupleId,
    device: actors::DeviceId,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.link.leave();
    }
}

/// How the session ends, once it does.
enum Close {
    /// With a close frame: an RFC 6455 §7.4 status code and a reason.
    With(u16, &'static str),
    /// Without one: the connection is gone, or the client does not read its frames.
    Silently,
}

enum Event {
    Frame(Option<Result<Message, WsError>>),
    /// The write buffer went out (or the connection failed).
    Flushed(Result<(), WsError>),
    /// A room event, the first of a batch.
    Room(RoomEvent),
    Kicked(Result<Kick, oneshot::error::RecvError>),
    Heartbeat,
    Silent,
    JoinTimeout,
    Shutdown,
}

struct Session {
    state: AppState,
    events: mpsc::Sender<RoomEvent>,
    /// The session's own frames (pongs, errors, pings), written after each event.
    own: Vec<Message>,
    joined: Option<Joined>,
}

/// The socket's writing side: whether a flush is owed, what was written since the last one.
#[derive(Default)]
struct Outbox {
    /// Frames are in the socket's buffer (or a would-block write), not yet flushed.
    dirty: bool,
    /// The session's own frames written since the last completed flush.
    own_unflushed: usize,
    /// When each live signal in the unflushed batch was received, for the relay latency.
    received: Vec<std::time::Instant>,
    /// Set when the client does not read even the session's own frames: it is dropped
    /// rather than allowed to grow the buffer.
    stalled: bool,
}

/// The other devices of the couple connected now, as the room's events tell them: the list
/// in `joined`, then `peer-joined` and `peer-left`. Someone watches this device's presence
/// while it is not empty.
#[derive(Default)]
struct Presence {
    peers: Vec<actors::DeviceId>,
}

impl Presence {
    fn note(&mut self, event: &RoomEvent) {
        match event {
            RoomEvent::Joined(joined) => self.peers.clone_from(&joined.peers),
            RoomEvent::PeerJoined(d) if !self.peers.contains(d) => self.peers.push(d.clone()),
            RoomEvent::PeerLeft(d) => self.peers.retain(|p| p != d),
            _ => {}
        }
    }

    fn watched(&self) -> bool {
        !self.peers.is_empty()
    }
}

/// Runs a session until the socket closes, the client times out or the server shuts down.
pub async fn run<S>(socket: S, state: AppState)
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Send + 'static,
{
    let _open = state.metrics.websocket_open();
    let mut socket = std::pin::pin!(socket);
    let (events, mut events_rx) = mpsc::channel(state.ws.outbound_queue);
    let relays = state.metrics.domain();
    let mut out = Outbox::default();
    let mut shutdown = state.shutdown.listener();
    // Made once: a fresh `recv()` per turn of the loop would register a new waiter each time.
    let stopping = shutdown.recv();
    let mut live = Liveness::new(Heartbeat::new(&state));
    let join_timeout = state.ws.join_timeout;
    let mut presence = Presence::default();
    let ping = tokio::time::sleep(live.beat.period(false));
    let silence = tokio::time::sleep(live.beat.silence(false));
    // An unjoined socket must join within `join_timeout` (again after each leave-couple).
    let join_deadline = tokio::time::sleep(join_timeout);
    tokio::pin!(ping, silence, join_deadline, stopping);
    let mut session = Session {
        state,
        events,
        own: Vec::new(),
        joined: None,
    };
    loop {
        let dirty = out.dirty;
        let io = std::future::poll_fn(|cx| poll_io(socket.as_mut(), &mut events_rx, dirty, cx));
        let event = tokio::select! {
            io = io => io,
            kick = kicked(&mut session.joined) => Event::Kicked(kick),
            () = &mut ping => Event::Heartbeat,
            () = &mut silence => Event::Silent,
            () = &mut join_deadline, if session.joined.is_none() => Event::JoinTimeout,
            () = &mut stopping => Event::Shutdown,
        };
        let was_joined = session.joined.is_some();
        let close = match event {
            // The client closed (or the connection is gone): nothing to send back.
            Event::Frame(Some(Ok(Message::Close(_))) | None) | Event::Flushed(Err(_)) => {
                Some(Close::Silently)
            }
            Event::Frame(Some(Ok(msg))) => {
                session.on_frame(msg).await;
                // After handling too: a slow join must not count as the client's silence.
                live.silence_from = Instant::now();
                None
            }
            Event::Frame(Some(Err(e))) => Some(read_error_close(&e)),
            Event::Flushed(Ok(())) => {
                out.flushed(&relays);
                None
            }
            Event::Room(first) => {
                out.write_events(socket.as_mut(), first, &mut events_rx, &mut presence);
                None
            }
            Event::Kicked(Ok(Kick::Replaced)) => Some(Close::With(
                CLOSE_REPLACED,
                "replaced by a newer connection",
            )),
            Event::Kicked(Ok(Kick::Revoked)) => Some(Close::With(CLOSE_REVOKED, "device revoked")),
            Event::Kicked(Ok(Kick::SlowConsumer)) => {
                Some(Close::With(CLOSE_SLOW_CONSUMER, "outbound queue full"))
            }
            Event::Kicked(Err(_)) => {
                // The room went away (restart after a failure, or stop): tell the client to rejoin.
                session.room_gone(None);
                None
            }
            Event::Silent => live
                .timed_out(silence.as_mut())
                .then_some(Close::With(CLOSE_TIMEOUT, "heartbeat timeout")),
            Event::JoinTimeout => Some(Close::With(CLOSE_JOIN_TIMEOUT, "join timeout")),
            Event::Heartbeat => {
                session.frame(Message::Ping(bytes::Bytes::new()));
                ping.as_mut()
                    .reset(Instant::now() + live.beat.period(live.watched));
                None
            }
            Event::Shutdown => Some(Close::With(CLOSE_GOING_AWAY, "server shutting down")),
        };
        if was_joined && session.joined.is_none() {
            // Left (or the room went away): the time to join again starts now, alone.
            join_deadline.as_mut().reset(Instant::now() + join_timeout);
        }
        if session.joined.is_none() {
            // Alone until joined, whatever an old room's queued events say.
            presence = Presence::default();
        }
        if live.watch(presence.watched(), ping.as_mut(), silence.as_mut()) {
            // Someone sees this device now: find out at once whether it is there.
            session.frame(Message::Ping(bytes::Bytes::new()));
        }
        out.write_own(socket.as_mut(), &mut session.own);
        out.try_flush(socket.as_mut(), &relays);
        // While its writes are stuck the socket takes no room events, so it cannot learn that
        // a peer came: a client that neither reads nor writes is held to the client timeout.
        live.stuck(out.dirty, silence.as_mut());
        // A client that does not read its own replies is dropped without a close frame.
        if let Some(close) = close.or(out.stalled.then_some(Close::Silently)) {
            drop(session);
            if let Close::With(code, reason) = close {
                close_with(socket.as_mut(), code, reason).await;
            }
            break;
        }
    }
}

/// Sends a close frame after what is already buffered, and closes; bounded in time.
async fn close_with<S>(mut socket: Pin<&mut S>, code: u16, reason: &'static str)
where
    S: Sink<Message, Error = WsError>,
{
    let closing = async {
        let _ = socket.as_mut().feed(close_frame(code, reason)).await;
        let _ = socket.as_mut().close().await;
    };
    let _ = tokio::time::timeout(WRITER_FLUSH, closing).await;
}

/// One step of the socket: a pending flush first, then an incoming frame, then (when nothing
/// is left to flush) the next room event.
fn poll_io<S>(
    mut socket: Pin<&mut S>,
    events: &mut mpsc::Receiver<RoomEvent>,
    dirty: bool,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Event>
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>>,
{
    use std::task::Poll;
    if dirty && let Poll::Ready(flushed) = socket.as_mut().poll_flush(cx) {
        return Poll::Ready(Event::Flushed(flushed));
    }
    if let Poll::Ready(frame) = socket.as_mut().poll_next(cx) {
        return Poll::Ready(Event::Frame(frame));
    }
    if !dirty && let Poll::Ready(Some(event)) = events.poll_recv(cx) {
        return Poll::Ready(Event::Room(event));
    }
    Poll::Pending
}

impl Outbox {
    /// Flushes at once if the socket takes it (most of the time: the kernel takes the bytes),
    /// saving a turn of the loop; otherwise the loop flushes when the socket is writable.
    fn try_flush<S>(&mut self, mut socket: Pin<&mut S>, relays: &actors::DomainMetrics)
    where
        S: Sink<Message, Error = WsError>,
    {
        if !self.dirty {
            return;
        }
        match futures_util::FutureExt::now_or_never(socket.flush()) {
            Some(Ok(())) => {
                self.flushed(relays);
            }
            // The connection failed: the session ends at the check below its event.
            Some(Err(_)) => self.stalled = true,
            None => {}
        }
    }

    /// The batch went out: its live signals count as relayed now.
    fn flushed(&mut self, relays: &actors::DomainMetrics) {
        self.dirty = false;
        self.own_unflushed = 0;
        for received in self.received.drain(..) {
            relays.signal_written(received);
        }
    }

    /// Renders `first` and what else is queued (up to [`EVENT_BATCH`] or
    /// [`WRITE_BATCH_BYTES`]) into the socket's buffer; the next loop flushes them in one
    /// write.
    fn write_events<S>(
        &mut self,
        mut socket: Pin<&mut S>,
        first: RoomEvent,
        events: &mut mpsc::Receiver<RoomEvent>,
        presence: &mut Presence,
    ) where
        S: Sink<Message, Error = WsError>,
    {
        let mut next = Some(first);
        let (mut taken, mut bytes) = (0, 0);
        while let Some(event) = next.take() {
            taken += 1;
            presence.note(&event);
            if let RoomEvent::Signal {
                received: Some(received),
                ..
            } = &event
            {
                self.received.push(*received);
            }
            let text = render(&event);
            bytes += text.len();
            self.start_send(socket.as_mut(), Message::text(text));
            if taken < EVENT_BATCH && bytes < WRITE_BATCH_BYTES {
                next = events.try_recv().ok();
            }
        }
    }

    /// Writes the session's own frames; too many unflushed ones mark the client stalled.
    fn write_own<S>(&mut self, mut socket: Pin<&mut S>, own: &mut Vec<Message>)
    where
        S: Sink<Message, Error = WsError>,
    {
        for msg in own.drain(..) {
            self.own_unflushed += 1;
            if self.own_unflushed > FRAME_QUEUE {
                self.stalled = true;
                return;
            }
            self.start_send(socket.as_mut(), msg);
        }
    }

    /// Puts a frame in the socket's write buffer (tungstenite writes what it can at once and
    /// keeps the rest for the flush); a failed write ends the session at the next flush.
    fn start_send<S>(&mut self, socket: Pin<&mut S>, msg: Message)
    where
        S: Sink<Message, Error = WsError>,
    {
        if socket.start_send(msg).is_err() {
            self.stalled = true;
        }
        self.dirty = true;
    }
}

/// The close frame owed for a read error: 1009 for an oversized message, 1002 for a
/// protocol violation (invalid UTF-8 included), none when the connection is simply gone.
fn read_error_close(e: &WsError) -> Close {
    match e {
        WsError::Capacity(_) => Close::With(CLOSE_TOO_BIG, "message too big"),
        WsError::Protocol(_) | WsError::Utf8(_) => {
            Close::With(CLOSE_PROTOCOL_ERROR, "protocol error")
        }
        _ => Close::Silently,
    }
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// The heartbeat's two speeds.
#[derive(Clone, Copy)]
struct Heartbeat {
    watched: Duration,
    alone: Duration,
    client_timeout: Duration,
}

impl Heartbeat {
    fn new(state: &AppState) -> Self {
        Self {
            watched: state.ws.heartbeat,
            alone: state.ws.alone_heartbeat,
            client_timeout: state.ws.client_timeout,
        }
    }

    /// Time between pings.
    fn period(self, watched: bool) -> Duration {
        if watched { self.watched } else { self.alone }
    }

    /// Silence after which the socket is closed: alone, one missed ping plus the timeout.
    fn silence(self, watched: bool) -> Duration {
        if watched {
            self.client_timeout
        } else {
            self.alone + self.client_timeout
        }
    }
}

/// The heartbeat's state: which speed it runs at, and since when the client has been silent.
struct Liveness {
    beat: Heartbeat,
    /// Whether another device of the couple is connected.
    watched: bool,
    /// Whether a flush is pending (the client does not read what was written).
    stuck: bool,
    /// The last frame, or the moment a peer started watching, whichever is later.
    silence_from: Instant,
}

impl Liveness {
    fn new(beat: Heartbeat) -> Self {
        Self {
            beat,
            watched: false,
            stuck: false,
            silence_from: Instant::now(),
        }
    }

    /// The silence timer fired: true if the client has really been silent too long;
    /// otherwise the timer is re-armed to the real deadline.
    fn timed_out(&self, silence: Pin<&mut Sleep>) -> bool {
        let due = self.silence_from + self.beat.silence(self.watched || self.stuck);
        if due > Instant::now() {
            silence.reset(due);
            return false;
        }
        true
    }

    /// Notes whether writes are stuck; stuck, the client timeout applies as when watched (the
    /// timer, armed for the longer limit, is brought forward; it re-arms itself if the
    /// writes get going again).
    fn stuck(&mut self, stuck: bool, silence: Pin<&mut Sleep>) {
        if stuck == self.stuck {
            return;
        }
        self.stuck = stuck;
        if stuck && !self.watched {
            silence.reset(self.silence_from + self.beat.silence(true));
        }
    }

    /// Switches the heartbeat's speed when presence changes; true when a peer started
    /// watching, so the caller pings at once (the silence limit starts from now).
    fn watch(&mut self, watched: bool, ping: Pin<&mut Sleep>, silence: Pin<&mut Sleep>) -> bool {
        if watched == self.watched {
            return false;
        }
        self.watched = watched;
        let now = Instant::now();
        if watched {
            self.silence_from = now;
        }
        silence.reset(self.silence_from + self.beat.silence(watched || self.stuck));
        ping.reset(now + self.beat.period(watched));
        watched
    }
}

/// Resolves when the room drops a joined socket: a kick says why; an error means the room
/// itself went away. Never resolves while not joined.
async fn kicked(joined: &mut Option<Joined>) -> Result<Kick, oneshot::error::RecvError> {
    match joined {
        Some(j) => (&mut j.kicked).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Queues one of the session's own frames; the loop writes it after the current event.
    fn frame(&mut self, msg: Message) {
        self.own.push(msg);
    }

    fn send_error(&mut self, err: &ApiError, id: Option<&actors::SignalId>) {
        err.report();
        self.frame(Message::text(ServerMsg::error(err, id).to_text()));
    }

    async fn on_frame(&mut self, msg: Message) {
        let parsed = match &msg {
            Message::Text(text) => ClientMsg::parse(text.as_str()),
            Message::Binary(_) => Err(ApiError::BinaryFrame),
            // Ping, pong, close: the heartbeat already counted them.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return,
        };
        // A joined socket's messages count toward its device's budget, like REST signals.
        if let Some(j) = &self.joined
            && let Err(e) =
                self.state
                    .limits
                    .check_device(DeviceLimit::Signal, &j.couple, &j.device)
        {
            let id = match &parsed {
                Ok(ClientMsg::WebrtcSignal { id, .. }) => id.clone(),
                _ => None,
            };
            return self.send_error(&e, id.as_ref());
        }
        match parsed {
            Ok(m) => self.on_message(m).await,
            Err(e) => self.send_error(&e, None),
        }
    }

    async fn on_message(&mut self, msg: ClientMsg<'_>) {
        match msg {
            ClientMsg::JoinCouple {
                couple,
                device,
                token,
                last_seq,
            } => {
                if self.joined.is_some() {
                    return self.send_error(&ApiError::AlreadyJoined, None);
                }
                // Boxed: the join's state lives only while joining, not in every idle
                // session's future (heaptrack: the session task was 4.2 KiB per socket).
                match Box::pin(self.join(&couple, &device, &token, last_seq)).await {
                    Ok(joined) => self.joined = Some(joined),
                    Err(e) => self.send_error(&e, None),
                }
            }
            ClientMsg::LeaveCouple => self.joined = None,
            ClientMsg::WebrtcSignal { to, payload, id } => {
                let Some(joined) = &self.joined else {
                    return self.send_error(&ApiError::NotJoined, id.as_ref());
                };
                let payload = Payload::new(payload.to_owned());
                if joined.link.send(to, payload, id.clone()).is_err() {
                    self.room_gone(id.as_ref());
                }
            }
            ClientMsg::Ack { seq } => {
                let Some(joined) = &self.joined else {
                    return self.send_error(&ApiError::NotJoined, None);
                };
                if joined.link.ack(seq).is_err() {
                    self.room_gone(None);
                }
            }
            ClientMsg::Ping => {
                self.frame(Message::text(ServerMsg::Pong.to_text()));
            }
        }
    }

    /// The room went away under a request: drop the membership, tell the client to rejoin.
    fn room_gone(&mut self, id: Option<&actors::SignalId>) {
        self.joined = None;
        self.send_error(&ApiError::Room(actors::RoomError::Unavailable), id);
    }

    async fn join(
        &self,
        couple: &actors::CoupleId,
        device: &actors::DeviceId,
        token: &str,
        last_seq: Option<actors::Seq>,
    ) -> Result<Joined, ApiError> {
        let token = parse_bearer(&format!("Bearer {token}"))?;
        let claims = self.state.pairing.authenticate(&token).await?;
        require_access(&claims, couple, Some(device))?;
        let mut receivers = None;
        let link = self
            .state
            .rooms
            .join(couple, device, last_seq, || {
                let (kick, kicked) = oneshot::channel();
                receivers = Some(kicked);
                Connection {
                    id: self.state.next_conn_id(),
                    events: self.events.clone(),
                    kick,
                    transport: Transport::WebSocket,
                }
            })
            .await?;
        let kicked = receivers
            .ok_or_else(|| ApiError::Internal("the room made no connection".to_owned()))?;
        let span = tracing::Span::current();
        span.record("couple_id", tracing::field::display(couple));
        span.record("device_id", tracing::field::display(device));
        tracing::debug!("joined");
        Ok(Joined {
            link,
            kicked,
            couple: couple.clone(),
            device: device.clone(),
        })
    }
}

/// Renders a room event as its wire text.
fn render(event: &RoomEvent) -> String {
    let msg = match event {
        RoomEvent::Joined(joined) => ServerMsg::Joined {
            couple_id: &joined.couple,
            device_id: &joined.device,
            peers: &joined.peers,
            recovered: joined.recovered,
        },
        RoomEvent::PeerJoined(d) => ServerMsg::PeerJoined { device_id: d },
        RoomEvent::PeerLeft(d) => ServerMsg::PeerLeft { device_id: d },
        RoomEvent::Signal { signal: s, .. } => ServerMsg::WebrtcSignal {
            from: &s.from,
            payload: s.payload.as_raw(),
            seq: s.seq,
            id: &s.id,
        },
        RoomEvent::Accepted(accepted) => ServerMsg::Accepted { id: &accepted.id },
        RoomEvent::Rejected { id, error } => {
            let error = ApiError::Room(error.clone());
            error.report();
            return ServerMsg::error(&error, id.as_ref()).to_text();
        }
    };
    msg.to_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> actors::DeviceId {
        actors::DeviceId::parse(id).unwrap()
    }

    fn joined(peers: &[&str]) -> RoomEvent {
        RoomEvent::Joined(Box::new(actors::Joined {
            couple: actors::CoupleId::parse("c").unwrap(),
            device: device("me"),
            peers: peers.iter().map(|p| device(p)).collect(),
            recovered: true,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_whose_writes_are_stuck_is_held_to_the_client_timeout_even_alone() {
        let beat = Heartbeat {
            watched: Duration::from_secs(2),
            alone: Duration::from_secs(25),
            client_timeout: Duration::from_secs(8),
        };
        let mut live = Liveness::new(beat);
        let silence = tokio::time::sleep(beat.silence(false));
        tokio::pin!(silence);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!live.timed_out(silence.as_mut()), "alone: 33 s allowed");
        live.stuck(true, silence.as_mut());
        assert!(
            silence.deadline() <= Instant::now(),
            "the timer is brought forward"
        );
        assert!(live.timed_out(silence.as_mut()), "stuck and silent for 9 s");
        live.stuck(false, silence.as_mut());
        assert!(
            !live.timed_out(silence.as_mut()),
            "writing again: alone rules"
        );
        assert!(
            silence.deadline() > Instant::now(),
            "and the timer re-armed"
        );
    }

    #[test]
    fn presence_follows_the_rooms_events() {
        let mut p = Presence::default();
        assert!(!p.watched(), "not joined: nobody watches");
        p.note(&joined(&[]));
        assert!(!p.watched(), "alone in the room");
        p.note(&RoomEvent::PeerJoined(device("a")));
        p.note(&RoomEvent::PeerJoined(device("b")));
        p.note(&RoomEvent::PeerJoined(device("a")));
        p.note(&RoomEvent::PeerLeft(device("a")));
        assert!(p.watched(), "b is still there (a joined twice, left once)");
        p.note(&RoomEvent::PeerLeft(device("b")));
        assert!(!p.watched());
        p.note(&joined(&["a"]));
        assert!(p.watched(), "a rejoin starts from the room's list");
        p.note(&RoomEvent::PeerLeft(device("x")));
        assert!(p.watched(), "an unknown device leaving changes nothing");
    }
}
