// The app's own client library, socket.io-client 4.8, against the real server: join and
// presence, relay, order, both transports, acknowledgements, resume, interop with /ws and
// REST, refusals, heartbeat, and a device that never acks. docs/protocol.md §12.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { call, connect as connectTo, next, signals, wsConnect } from './clients.mjs';
import { WAIT_MS, joinBody, metric, pair, restSignal, startServer } from './server.mjs';

let server;
before(async () => {
  server = await startServer({
    ALLOWED_ORIGINS: 'https://app.example',
    // One device sends 1 000 signals below: far over the default budget of 200.
    RATE_LIMIT_SIGNALS_PER_SEC: '100000',
    RATE_LIMIT_SIGNALS_BURST: '100000',
    MAILBOX_MAX_SIGNALS: '64',
    WS_OUTBOUND_QUEUE: '2048',
  });
});
after(async () => server?.stop());

/** A socket.io-client socket to the test server (see clients.mjs). */
function connect(options = {}) {
  return connectTo(server.base, options);
}

/** Joins over `join-couple` with a callback; resolves with the answer. */
async function joined(couple, device, options = {}, lastSeq) {
  const { socket, error } = await connect(options);
  assert.equal(error, null);
  const answer = await call(socket, 'join-couple', joinBody(couple, device, lastSeq));
  return { socket, answer };
}

test('join answers with the joined body, presence flows both ways', async () => {
  const couple = await pair(server.base);
  const { socket: a, answer } = await joined(couple, 'a');
  assert.deepEqual(answer, { coupleId: couple.id, deviceId: 'a', peers: [], recovered: true });
  // b joins at connect, through the handshake's auth object.
  const peerJoined = next(a, 'peer-joined');
  const { socket: b, error } = await connect({ auth: joinBody(couple, 'b') });
  assert.equal(error, null);
  assert.deepEqual((await next(b, 'joined')).peers, ['a']);
  assert.deepEqual(await peerJoined, { deviceId: 'b' });
  const peerLeft = next(a, 'peer-left');
  b.disconnect();
  assert.deepEqual(await peerLeft, { deviceId: 'b' });
  a.disconnect();
});

for (const transports of [['polling'], ['websocket'], ['polling', 'websocket']]) {
  test(`relay both ways, in order, with acknowledgements (${transports.join(' + ')})`, async () => {
    const couple = await pair(server.base);
    const { socket: a } = await joined(couple, 'a', { transports });
    const { socket: b } = await joined(couple, 'b', { transports });
    const toB = signals(b, 50);
    const acks = [];
    for (let i = 0; i < 50; i += 1) {
      acks.push(call(a, 'webrtc-signal', { to: 'b', payload: { n: i }, id: `a-${i}` }));
    }
    const answers = await Promise.all(acks);
    answers.forEach((ack, i) => assert.equal(ack.id, `a-${i}`));
    const seqs = answers.map((ack) => ack.seq);
    assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, 'seqs grow');
    const got = await toB;
    assert.deepEqual(got.map((s) => s.payload.n), [...Array(50).keys()]);
    assert.deepEqual(got.map((s) => s.seq), seqs);
    assert.equal(got[0].from, 'a');
    // And back, without an id: the server gives one, and the answer names it.
    const toA = next(a, 'webrtc-signal');
    const ack = await call(b, 'webrtc-signal', { to: 'a', payload: 'answer' });
    assert.equal(typeof ack.id, 'string');
    assert.deepEqual(await toA, { from: 'b', payload: 'answer', seq: ack.seq, id: ack.id });
    a.disconnect();
    b.disconnect();
  });
}

test('a dropped socket resumes with lastSeq: nothing lost, nothing doubled', async () => {
  const couple = await pair(server.base);
  const { socket: a } = await joined(couple, 'a');
  let { socket: b } = await joined(couple, 'b');
  const first = signals(b, 5);
  for (let i = 0; i < 5; i += 1) await call(a, 'webrtc-signal', { to: 'b', payload: i });
  const seen = await first;
  const last = seen[2].seq; // processed 3 of 5, then the socket drops
  b.disconnect();
  await next(a, 'peer-left');
  for (let i = 5; i < 8; i += 1) await call(a, 'webrtc-signal', { to: 'b', payload: i });
  const again = await connect();
  b = again.socket;
  const backlog = signals(b, 5);
  const answer = await call(b, 'join-couple', joinBody(couple, 'b', last));
  assert.equal(answer.recovered, true);
  assert.deepEqual((await backlog).map((s) => s.payload), [3, 4, 5, 6, 7]);
  a.disconnect();
  b.disconnect();
});

test('interop: a /ws device and a REST sender share the mailbox and the order', async () => {
  const couple = await pair(server.base, 'c');
  const { socket: a } = await joined(couple, 'a');
  const ws = await wsConnect(server.base);
  const { frame } = ws;
  ws.send(JSON.stringify({ type: 'join-couple', ...joinBody(couple, 'b') }));
  assert.equal((await frame('joined')).recovered, true);
  // Socket.IO -> /ws, then REST -> /ws: one mailbox, one order.
  await call(a, 'webrtc-signal', { to: 'b', payload: 'from socket.io' });
  assert.equal((await restSignal(server.base, couple, 'c', 'b', 'from rest')).status, 202);
  const one = await frame('webrtc-signal');
  const two = await frame('webrtc-signal');
  assert.deepEqual([one.payload, two.payload], ['from socket.io', 'from rest']);
  assert.ok(two.seq > one.seq);
  // /ws -> Socket.IO, and REST -> Socket.IO.
  const toA = signals(a, 2);
  ws.send(JSON.stringify({ type: 'webrtc-signal', to: 'a', payload: 'from ws', id: 'w1' }));
  assert.equal((await frame('accepted')).id, 'w1');
  assert.equal((await restSignal(server.base, couple, 'c', 'a', 'rest to a')).status, 202);
  assert.deepEqual((await toA).map((s) => s.payload), ['from ws', 'rest to a']);
  // One socket per device across transports: b joining over Socket.IO replaces its /ws socket.
  const closed = new Promise((ok) => ws.once('close', (code) => ok(code)));
  const { socket: b } = await joined(couple, 'b');
  assert.equal(await closed, 4000);
  assert.ok((await metric(server.base, 'our_memories_signals_relayed_total{transport="socketio"}')) >= 2);
  a.disconnect();
  b.disconnect();
});

test('refusals: wrong token, another couple, bad origin, bad input; the socket survives', async () => {
  const couple = await pair(server.base);
  const other = await pair(server.base);
  const wrong = await connect({ auth: { ...joinBody(couple, 'a'), token: 'nope' } });
  assert.equal(wrong.error?.message, 'invalid_token');
  const foreign = await connect({ auth: { ...joinBody(couple, 'a'), token: other.tokens.a } });
  assert.equal(foreign.error?.message, 'forbidden');
  for (const transports of [['polling'], ['websocket']]) {
    const refused = await connect({ transports, extraHeaders: { origin: 'https://evil.example' } });
    assert.ok(refused.error, `origin refused over ${transports}`);
    refused.socket.close();
    const allowed = await connect({ transports, extraHeaders: { origin: 'https://app.example' } });
    assert.equal(allowed.error, null, `listed origin over ${transports}`);
    allowed.socket.disconnect();
  }
  // Polling answers carry the security headers, and CORS for a listed origin only.
  const handshake = (origin) =>
    fetch(`${server.base}/socket.io/?EIO=4&transport=polling`, { headers: { origin } });
  const listed = await handshake('https://app.example');
  assert.equal(listed.status, 200);
  assert.equal(listed.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(listed.headers.get('access-control-allow-origin'), 'https://app.example');
  const unlisted = await handshake('https://evil.example');
  assert.equal(unlisted.status, 403);
  assert.equal((await unlisted.json()).error.code, 'origin_not_allowed');
  const { socket } = await connect();
  const error = (answer) => answer.error?.code;
  assert.equal(error(await call(socket, 'webrtc-signal', { to: 'b', payload: 1 })), 'not_joined');
  assert.equal(error(await call(socket, 'join-couple', { coupleId: 'bad id' })), 'invalid_request');
  assert.equal(error(await call(socket, 'join-couple', { ...joinBody(couple, 'a'), token: other.tokens.a })), 'forbidden');
  await call(socket, 'join-couple', joinBody(couple, 'a'));
  assert.equal(error(await call(socket, 'join-couple', joinBody(couple, 'a'))), 'already_joined');
  assert.equal(error(await call(socket, 'dance', {})), 'unknown_type');
  const wrongType = await call(socket, 'webrtc-signal', { to: 7, payload: 1 });
  assert.equal(error(wrongType), 'invalid_request');
  assert.equal(wrongType.error.message, '`to`: expected a string, got integer `7`');
  assert.equal((await call(socket, 'ack', {})).error.message, 'missing field `seq`');
  assert.equal(error(await call(socket, 'webrtc-signal', { to: 'b', payload: Buffer.from('x') })), 'binary_not_supported');
  const big = 'x'.repeat(64 * 1024);
  assert.equal(error(await call(socket, 'webrtc-signal', { to: 'b', payload: big, id: 'big' })), 'payload_too_large');
  // Without a callback, the same failure is an `error` event.
  const event = next(socket, 'error');
  socket.emit('dance', {});
  assert.equal((await event).code, 'unknown_type');
  // Still joined and relaying.
  assert.equal(typeof (await call(socket, 'webrtc-signal', { to: 'b', payload: 'ok' })).seq, 'number');
  socket.disconnect();
});

test('an event sent the moment CONNECT arrives is answered (300 raw connections)', async () => {
  // Raw Engine.IO/Socket.IO frames, so the event leaves as soon as `40{…}` arrives, as fast as
  // any client can send it. Before the session was set up in the connect middleware, a few
  // in a hundred such events (1 to 12, depending on load) were dropped without an answer.
  const couple = await pair(server.base);
  const url = `${server.base.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`;
  const unanswered = [];
  for (let i = 0; i < 300; i++) {
    const ws = new WebSocket(url);
    const answered = await new Promise((ok) => {
      const timer = setTimeout(() => ok(false), WAIT_MS);
      ws.on('message', (data) => {
        const m = data.toString();
        if (m === '2') ws.send('3');
        else if (m.startsWith('0')) ws.send('40');
        else if (m.startsWith('40')) ws.send(`420${JSON.stringify(['join-couple', joinBody(couple, i % 2 ? 'a' : 'b')])}`);
        else if (m.startsWith('430')) {
          clearTimeout(timer);
          ok(true);
        }
      });
    });
    if (!answered) unanswered.push(i);
    ws.terminate();
  }
  assert.deepEqual(unanswered, [], 'joins sent right after CONNECT that got no answer');
});

test('a vanished Socket.IO peer is reported gone within 10 s', async () => {
  const couple = await pair(server.base);
  const { socket: a } = await joined(couple, 'a', { transports: ['websocket'] });
  // b runs in its own process, which is then frozen: no close, no pongs.
  const script = `
    import { io } from 'socket.io-client';
    const s = io(${JSON.stringify(server.base)}, { transports: ['websocket'], auth: ${JSON.stringify(joinBody(couple, 'b'))} });
    s.on('joined', () => console.log('joined'));`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: new URL('.', import.meta.url).pathname,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await next(a, 'peer-joined');
    const frozen = Date.now();
    child.kill('SIGSTOP');
    assert.deepEqual(await next(a, 'peer-left'), { deviceId: 'b' });
    const took = Date.now() - frozen;
    assert.ok(took < 10_000, `peer-left after ${took} ms`);
  } finally {
    child.kill('SIGKILL');
    a.disconnect();
  }
});

test('a device that never acks receives 1 000 signals and never fails its sender', async () => {
  const couple = await pair(server.base);
  const { socket: a } = await joined(couple, 'a', { transports: ['websocket'] });
  const { socket: b } = await joined(couple, 'b', { transports: ['websocket'] });
  // The mailbox holds 64 here: b never acks, so the delivered ones make room.
  const all = signals(b, 1000);
  const answers = [];
  for (let i = 0; i < 1000; i += 1) {
    // A generous wait: 100 callbacks in flight through a debug build on a busy CI machine.
    const answer = a.timeout(3 * WAIT_MS).emitWithAck('webrtc-signal', { to: 'b', payload: i, id: `n${i}` });
    answers.push(answer);
    if (i % 100 === 99) await Promise.all(answers.slice(-100));
  }
  for (const answer of await Promise.all(answers)) {
    assert.equal(answer.error, undefined, JSON.stringify(answer.error));
  }
  // Neither side was told anything went wrong (a kick would come as an `error` event).
  assert.deepEqual([a, b].flatMap((s) => s.buffered.filter(([e]) => e === 'error')), []);
  assert.deepEqual((await all).map((s) => s.payload), [...Array(1000).keys()]);
  a.disconnect();
  b.disconnect();
});

test('a joined socket counts against the device signal budget, like /ws', async () => {
  const limited = await startServer({ RATE_LIMIT_SIGNALS_BURST: '5', RATE_LIMIT_SIGNALS_PER_SEC: '1' });
  try {
    const couple = await pair(limited.base);
    const socket = io(limited.base, { reconnection: false, forceNew: true, auth: joinBody(couple, 'a') });
    await new Promise((ok) => socket.once('joined', ok));
    const answers = [];
    for (let i = 0; i < 6; i += 1) {
      answers.push(await socket.timeout(WAIT_MS).emitWithAck('webrtc-signal', { to: 'b', payload: i, id: `r${i}` }));
    }
    assert.deepEqual(answers.slice(0, 5).map((a) => a.id), ['r0', 'r1', 'r2', 'r3', 'r4']);
    assert.equal(answers[5].error.code, 'rate_limited');
    assert.equal(answers[5].error.id, 'r5');
    assert.equal(await metric(limited.base, 'our_memories_rate_limited_total{limit="signals"}'), 1);
    socket.disconnect();
  } finally {
    await limited.stop();
  }
});

test('shutdown disconnects Socket.IO clients and does not wait for the deadline', async () => {
  const own = await startServer({ SHUTDOWN_TIMEOUT_SECS: '10' });
  const couple = await pair(own.base);
  const left = io(own.base, { reconnection: false, forceNew: true, auth: joinBody(couple, 'a') });
  await new Promise((ok) => left.once('joined', ok));
  left.disconnect(); // a socket that has come and gone must not hold the server open
  const stays = io(own.base, { reconnection: false, forceNew: true, auth: joinBody(couple, 'b') });
  await new Promise((ok) => stays.once('joined', ok));
  const dropped = new Promise((ok) => stays.once('disconnect', ok));
  const started = Date.now();
  await own.stop();
  const took = Date.now() - started;
  await dropped;
  assert.ok(took < 5_000, `the server took ${took} ms to stop`);
  assert.ok(!own.logs.some((l) => l.includes('still open at the shutdown deadline')), own.logs.join('\n'));
});
