// The reference browser client, web/our-memories.js, against the real server (in Node 20, with
// the `ws` package's WebSocket): pairing, presence, exactly-once signals across reconnects,
// resends until `accepted`, the REST fallback and the way back, ICE servers, backups and
// revocation. docs/protocol.md §3 to §7.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, afterEach, before, test } from 'node:test';
import WebSocket from 'ws';
import { Client, pairConfirm, pairInitiate } from '../../web/our-memories.js';
import { bounded, until, wsConnect } from './clients.mjs';
import { joinBody, pair, startServer } from './server.mjs';

let server;
before(async () => {
  server = await startServer({
    STUN_URLS: 'stun:127.0.0.1:3478',
    // Polling every 50 ms and resending fast would spend the default budget of 20/s.
    RATE_LIMIT_SIGNALS_PER_SEC: '1000',
    RATE_LIMIT_SIGNALS_BURST: '1000',
  });
});
after(async () => server?.stop());

/** Short delays, so that reconnects and fallbacks happen well within WAIT_MS. */
const FAST = { backoff: { baseMs: 20, capMs: 200 }, ackDelayMs: 20, pollIntervalMs: 50 };
const EVENTS = ['state', 'joined', 'signal', 'peer-joined', 'peer-left', 'revoked', 'error'];
const range = (n) => Array.from({ length: n }, (_, i) => i);

const open = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.close()));
});

/** A Client for `device` of `couple`; every event it emits is buffered in `client.rec`. */
function client(couple, device, options = {}) {
  const c = new Client({
    baseUrl: server.base,
    coupleId: couple.id,
    deviceId: device,
    token: couple.tokens[device],
    WebSocket,
    ...FAST,
    ...options,
  });
  const rec = { events: [], waiters: [], pos: {} };
  for (const type of EVENTS) {
    c.on(type, (detail) => {
      rec.events.push([type, detail]);
      rec.waiters.splice(0).forEach((wake) => wake());
    });
  }
  c.rec = rec;
  open.push(c);
  return c;
}

/** The next `type` event of `c` (after the last one taken) for which `pred` holds. */
function next(c, type, pred = () => true) {
  const rec = c.rec;
  return until(
    rec.waiters,
    () => {
      for (let i = rec.pos[type] ?? 0; i < rec.events.length; i++) {
        const [t, detail] = rec.events[i];
        if (t === type && pred(detail)) {
          rec.pos[type] = i + 1;
          return detail;
        }
      }
      return undefined;
    },
    `${type} event on ${c.deviceId}`,
  );
}

/** Resolves if `c` emits no `type` event for `ms`; rejects at the first one. */
function none(c, type, ms) {
  const from = c.rec.events.length;
  return new Promise((ok, fail) => {
    const timer = setTimeout(ok, ms);
    const check = () => {
      const seen = c.rec.events.slice(from).find(([t]) => t === type);
      if (seen) {
        clearTimeout(timer);
        fail(new Error(`unexpected ${type} event on ${c.deviceId}: ${JSON.stringify(seen[1])}`));
      } else c.rec.waiters.push(check);
    };
    c.rec.waiters.push(check);
  });
}

/** The signals `c` handed to the app, in order. */
const signalsOf = (c) => c.rec.events.filter(([t]) => t === 'signal').map(([, s]) => s);
const payloadsOf = (c) => signalsOf(c).map((s) => s.payload);
const nSignals = (c, n) =>
  until(c.rec.waiters, () => (signalsOf(c).length >= n ? true : undefined), `${n} signals on ${c.deviceId}`);


/** A new couple whose `a` and `b` are joined; `b`'s sockets go through a `sockets()` control. */
async function joinedPair() {
  const couple = await pair(server.base);
  const ctl = sockets();
  const a = client(couple, 'a').connect();
  await next(a, 'joined');
  const b = client(couple, 'b', { WebSocket: ctl.WebSocket }).connect();
  await next(b, 'joined');
  return { couple, ctl, a, b };
}
/** A `ws` WebSocket class whose sockets the test can see and break: `sockets` (each one made),
 * `sent` and `received` (parsed frames), `blocked` (new sockets go to a path that answers 404,
 * as a proxy that refuses WebSocket upgrades would), `dropAccepted` (hide `accepted` frames
 * from the client, as if they were lost), `mute` (hide every frame: a half-open connection),
 * `inject(frame)` (hand the client a frame as if the server had sent it on the last socket). */
function sockets() {
  const ctl = { sockets: [], sent: [], received: [], blocked: false, dropAccepted: false, mute: false, dropped: 0, waiters: [] };
  const wake = () => ctl.waiters.splice(0).forEach((w) => w());
  ctl.WebSocket = class extends WebSocket {
    constructor(url, ...rest) {
      super(ctl.blocked ? url.replace(/\/ws$/, '/no-websockets-here') : url, ...rest);
      ctl.sockets.push(this);
      wake();
    }
    send(data, ...rest) {
      ctl.sent.push(JSON.parse(data));
      super.send(data, ...rest);
      wake();
    }
    addEventListener(type, listener, options) {
      if (type !== 'message') return super.addEventListener(type, listener, options);
      const wrapped = (event) => {
        const frame = JSON.parse(event.data);
        ctl.received.push(frame);
        if (ctl.mute || (ctl.dropAccepted && frame.type === 'accepted')) ctl.dropped++;
        else listener(event);
        wake();
      };
      (this.messageListeners ??= []).push(wrapped);
      return super.addEventListener('message', wrapped, options);
    }
  };
  ctl.inject = (frame) => ctl.sockets.at(-1).messageListeners.forEach((l) => l({ data: JSON.stringify(frame) }));
  ctl.until = (found, what) => until(ctl.waiters, () => (found() ? true : undefined), what);
  return ctl;
}

test('pair with the library, connect, presence, signals both ways once and in order', async () => {
  const started = await pairInitiate(server.base, 'phone-a');
  assert.match(started.pairingToken, /^[A-Za-z0-9_-]{43}$/);
  const confirmed = await pairConfirm(server.base, {
    coupleId: started.coupleId,
    pairingToken: started.pairingToken,
    deviceId: 'phone-b',
  });
  assert.equal(confirmed.coupleId, started.coupleId);
  const couple = {
    id: started.coupleId,
    tokens: { 'phone-a': started.deviceToken, 'phone-b': confirmed.deviceToken },
  };
  const ctl = sockets();
  const a = client(couple, 'phone-a').connect();
  assert.deepEqual(await next(a, 'joined'), { peers: [], recovered: true });
  assert.equal(a.state, 'joined');
  const b = client(couple, 'phone-b', { WebSocket: ctl.WebSocket }).connect();
  assert.deepEqual((await next(b, 'joined')).peers, ['phone-a']);
  assert.deepEqual(await next(a, 'peer-joined'), { deviceId: 'phone-b' });
  assert.deepEqual(a.peers, ['phone-b']);

  const N = 25;
  const results = await bounded(
    Promise.all([
      ...range(N).map((i) => a.send('phone-b', { n: i })),
      ...range(N).map((i) => b.send('phone-a', { n: i, sdp: 'é'.repeat(i) })),
    ]),
    'accepted for every send',
  );
  for (const r of results) assert.equal(r.transport, 'ws');
  assert.equal(new Set(results.map((r) => r.id)).size, 2 * N, 'every signal has its own id');
  await nSignals(b, N);
  await nSignals(a, N);
  assert.deepEqual(payloadsOf(b), range(N).map((i) => ({ n: i })));
  assert.deepEqual(payloadsOf(a), range(N).map((i) => ({ n: i, sdp: 'é'.repeat(i) })));
  for (const [c, from] of [[a, 'phone-b'], [b, 'phone-a']]) {
    const got = signalsOf(c);
    assert.ok(got.every((s) => s.from === from));
    assert.ok(got.every((s, i) => i === 0 || s.seq > got[i - 1].seq), 'seq strictly increasing');
    assert.equal(c.lastSeq, got.at(-1).seq);
  }
  // The ids the receiver sees are the sender's (§5.2).
  assert.deepEqual(new Set(signalsOf(b).map((s) => s.id)), new Set(results.slice(0, N).map((r) => r.id)));
  // b acknowledged what it processed, cumulatively, in batches (fewer acks than signals).
  await ctl.until(() => ctl.sent.some((m) => m.type === 'ack' && m.seq === b.lastSeq), 'the ack of the last seq');
  const acks = ctl.sent.filter((m) => m.type === 'ack');
  assert.ok(acks.length < N, `${acks.length} acks for ${N} signals`);

  // A broadcast (no `to`) reaches the other device (§5.1).
  await a.send(null, 'to everyone');
  await nSignals(b, N + 1);
  assert.equal(signalsOf(b).at(-1).payload, 'to everyone');

  // Final errors reject (§5.3), locally when the client can tell.
  await assert.rejects(a.send('nobody', 1), { code: 'unknown_device' });
  await assert.rejects(a.send('phone-a', 1), { code: 'invalid_recipient' });
  await assert.rejects(a.send('phone-b', 'x'.repeat(65_535)), { code: 'payload_too_large' });
  await a.send('phone-b', 'x'.repeat(65_534)); // 65 536 bytes of JSON: the limit itself

  // §3.1 with Bearer: one more device, then §7.1 lists three.
  const more = await a.openPairing();
  assert.equal(more.deviceToken, couple.tokens['phone-a']);
  await pairConfirm(server.base, { coupleId: couple.id, pairingToken: more.pairingToken, deviceId: 'tablet' });
  assert.deepEqual((await b.listDevices()).map((d) => d.deviceId), ['phone-a', 'phone-b', 'tablet']);

  const left = next(a, 'peer-left');
  await b.close();
  assert.deepEqual(await left, { deviceId: 'phone-b' });
  assert.equal(b.state, 'closed');
  await assert.rejects(b.send('phone-a', 1), { code: 'closed' });
});

test('reconnect and resume: a killed socket comes back by itself, every signal exactly once, in order', async () => {
  const couple = await pair(server.base);
  const ctl = sockets();
  const a = client(couple, 'a').connect();
  await next(a, 'joined');
  // b's handler is stuck on signal 5, so when its socket dies it has received more than it has
  // processed: those come again in the backlog, and must not reach the app twice.
  let release;
  const gate = new Promise((ok) => (release = ok));
  const b = client(couple, 'b', {
    WebSocket: ctl.WebSocket,
    dedupeIds: false, // the seq rule alone (§5.4) must drop the redeliveries
    onSignal: async (s) => {
      if (s.payload === 5) await gate;
    },
  }).connect();
  await next(b, 'joined');
  await next(a, 'peer-joined');

  const N = 40;
  const sending = (async () => {
    for (let i = 0; i < N; i++) await a.send('b', i);
  })();
  const onSocket = () => ctl.received.filter((f) => f.type === 'webrtc-signal').length;
  await ctl.until(() => onSocket() >= 10, '10 signals on b\'s socket');
  assert.deepEqual(payloadsOf(b), [0, 1, 2, 3, 4]);
  const processed = signalsOf(b)[4].seq;
  assert.equal(b.lastSeq, processed);

  ctl.sockets[0].terminate(); // network loss: no close frame
  assert.equal((await next(b, 'state', (s) => s.state === 'reconnecting')).code, 1006);
  await next(b, 'joined');
  assert.equal(ctl.sockets.length, 2);
  const joins = ctl.sent.filter((m) => m.type === 'join-couple');
  assert.equal(joins.length, 2);
  assert.equal(joins[0].lastSeq, undefined);
  assert.equal(joins[1].lastSeq, processed, 'rejoined with the highest seq processed');
  release();

  await bounded(sending, 'a\'s sends accepted');
  await nSignals(b, N);
  assert.deepEqual(payloadsOf(b), range(N));
  const seqs = signalsOf(b).map((s) => s.seq);
  assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]));
  // One more signal after everything: nothing was handed over twice in between.
  await a.send('b', 'end');
  await nSignals(b, N + 1);
  assert.deepEqual(payloadsOf(b), [...range(N), 'end']);
  assert.ok(onSocket() > N + 1, 'the backlog did redeliver signals b had received');
});

test('a send is resent with the same id until accepted, and delivered once', async () => {
  const couple = await pair(server.base);
  // a is a bare /ws socket: what it receives is what the server relayed, with no client-side
  // de-duplication in between.
  const a = await wsConnect(server.base);
  a.json({ type: 'join-couple', ...joinBody(couple, 'a') });
  await a.frame('joined');
  const ctl = sockets();
  const b = client(couple, 'b', { WebSocket: ctl.WebSocket, transport: 'ws' }).connect();
  await next(b, 'joined');

  // 1. Issued while disconnected (and the server unreachable for a while).
  ctl.blocked = true;
  ctl.sockets[0].terminate();
  await next(b, 'state', (s) => s.state === 'reconnecting');
  const offline = b.send('a', 'while offline');
  await ctl.until(() => ctl.sockets.length >= 3, 'two refused reconnects');
  assert.equal(b.state, 'reconnecting');
  ctl.blocked = false;
  assert.equal((await bounded(offline, 'the offline send')).transport, 'ws');
  assert.equal((await a.frame('webrtc-signal')).payload, 'while offline');

  // 2. Taken by the server, but its `accepted` is lost with the socket.
  ctl.dropAccepted = true;
  const lost = b.send('a', 'accepted lost');
  const first = await a.frame('webrtc-signal');
  assert.equal(first.payload, 'accepted lost');
  await ctl.until(() => ctl.dropped === 1, 'the dropped accepted');
  ctl.dropAccepted = false;
  const sockets0 = ctl.sockets.length;
  ctl.sockets.at(-1).terminate();
  const result = await bounded(lost, 'the resent signal accepted');
  assert.equal(result.id, first.id);
  assert.equal(ctl.sockets.length, sockets0 + 1);
  const copies = ctl.sent.filter((m) => m.type === 'webrtc-signal' && m.payload === 'accepted lost');
  assert.equal(copies.length, 2, 'sent once per join');
  assert.equal(copies[1].id, copies[0].id, 'resent with the same id');
  // The server recognised the duplicate (§5.4): the next frame a gets is the next signal.
  await b.send('a', 'after');
  assert.equal((await a.frame('webrtc-signal')).payload, 'after');
  a.close();
});

test('a socket that goes silent is pinged, then given up and replaced (heartbeat)', async () => {
  const couple = await pair(server.base);
  const ctl = sockets();
  const b = client(couple, 'b', { WebSocket: ctl.WebSocket, heartbeatMs: 300, heartbeatTimeoutMs: 300 }).connect();
  await next(b, 'joined');
  ctl.mute = true; // the server's frames stop reaching the client, the socket stays "open"
  const lost = await next(b, 'state', (s) => s.state === 'reconnecting');
  assert.equal(lost.reason, 'heartbeat timeout');
  assert.ok(ctl.sent.some((m) => m.type === 'ping'), 'a JSON ping before giving up');
  ctl.mute = false;
  await next(b, 'joined');
  assert.equal(ctl.sockets.length, 2);
});

test('unavailable (the room failed, §5.7): the client rejoins on the same socket with lastSeq', async () => {
  const { couple, ctl, a, b } = await joinedPair();
  await a.send('b', 1);
  await nSignals(b, 1);
  // What every socket of a failed room gets (the room cannot be made to fail from outside).
  ctl.inject({ type: 'error', code: 'unavailable', message: 'temporarily unavailable; retry' });
  await next(b, 'state', (s) => s.state === 'reconnecting');
  await next(b, 'joined');
  assert.equal(ctl.sockets.length, 1, 'the same socket');
  const after = ctl.sent.slice(ctl.sent.findIndex((m) => m.type === 'join-couple') + 1).map((m) => m.type);
  assert.deepEqual(after.filter((t) => t !== 'ack'), ['leave-couple', 'join-couple']);
  assert.equal(ctl.sent.filter((m) => m.type === 'join-couple')[1].lastSeq, signalsOf(b)[0].seq);
  await a.send('b', 2);
  await b.send('a', 3);
  await nSignals(b, 2);
  await nSignals(a, 1);
  assert.deepEqual(payloadsOf(b), [1, 2]);
});

test('REST fallback when WebSocket is blocked, and back to WebSocket when it works', async () => {
  const couple = await pair(server.base, 'c');
  const a = client(couple, 'a').connect();
  const c = client(couple, 'c').connect();
  await next(a, 'joined');
  await next(c, 'joined');
  const ctl = sockets();
  ctl.blocked = true;
  const b = client(couple, 'b', { WebSocket: ctl.WebSocket, fallbackAfter: 2 }).connect();
  await next(b, 'state', (s) => s.state === 'fallback');
  assert.equal(b.transport, 'rest');
  assert.ok(ctl.sockets.length >= 2);

  // Receive by polling (§4.2), send with POST /api/signal (§4.1).
  await a.send('b', 'r1');
  await a.send('b', 'r2');
  await nSignals(b, 2);
  assert.deepEqual(payloadsOf(b), ['r1', 'r2']);
  assert.ok(signalsOf(b).every((s) => s.from === 'a' && typeof s.createdAt === 'string'));
  const viaRest = await b.send('a', 'q1');
  assert.equal(viaRest.transport, 'rest');
  assert.equal(viaRest.deliveries.length, 1);
  assert.equal(viaRest.deliveries[0].to, 'a');
  await nSignals(a, 1);
  assert.deepEqual(payloadsOf(a), ['q1']);
  // REST cannot broadcast: the client sends to each other device.
  const all = await b.send(null, 'everyone');
  assert.deepEqual(all.deliveries.map((d) => d.to).sort(), ['a', 'c']);
  await nSignals(a, 2);
  await nSignals(c, 1);
  assert.equal(payloadsOf(c)[0], 'everyone');
  assert.equal(b.state, 'fallback');

  // WebSocket works again: the background attempts find it and the client switches back.
  ctl.blocked = false;
  await next(b, 'joined');
  assert.equal(b.state, 'joined');
  assert.equal(b.transport, 'ws');
  await next(a, 'peer-joined', (p) => p.deviceId === 'b');
  await a.send('b', 'w1');
  await nSignals(b, 3);
  assert.deepEqual(payloadsOf(b), ['r1', 'r2', 'w1']);
  assert.equal((await b.send('a', 'q2')).transport, 'ws');
  await nSignals(a, 3);
  assert.deepEqual(payloadsOf(a), ['q1', 'everyone', 'q2']);
  const join = ctl.sent.find((m) => m.type === 'join-couple');
  assert.equal(join.lastSeq, signalsOf(b)[1].seq, 'joined with what REST had processed');
});

test('transport rest never opens a WebSocket', async () => {
  const couple = await pair(server.base);
  const ctl = sockets();
  const a = client(couple, 'a').connect();
  await next(a, 'joined');
  const b = client(couple, 'b', { WebSocket: ctl.WebSocket, transport: 'rest' }).connect();
  assert.equal(b.state, 'fallback');
  await a.send('b', 1);
  await nSignals(b, 1);
  await b.send('a', 2);
  await nSignals(a, 1);
  assert.equal(ctl.sockets.length, 0);
});

test('getIceServers returns the configured STUN entry, cached until its ttl', async () => {
  const couple = await pair(server.base);
  let calls = 0;
  const counting = (url, init) => {
    if (String(url).endsWith('/api/ice-servers')) calls++;
    return fetch(url, init);
  };
  const a = client(couple, 'a', { fetch: counting });
  assert.deepEqual(await a.getIceServers(), [{ urls: ['stun:127.0.0.1:3478'] }]);
  assert.deepEqual(await a.getIceServers(), [{ urls: ['stun:127.0.0.1:3478'] }]);
  assert.equal(calls, 1);
  await a.getIceServers({ refresh: true });
  assert.equal(calls, 2);
});

test('backup upload then download round-trips the bytes', async () => {
  const couple = await pair(server.base);
  const a = client(couple, 'a');
  const b = client(couple, 'b');
  const bytes = new Uint8Array(randomBytes(300_000));
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const meta = { v: 1, note: 'café ☕ 📷' }; // not ASCII: sent as \u escapes (§6.1)
  const uploaded = await a.uploadBackup(bytes, { meta });
  assert.equal(uploaded.size, bytes.length);
  assert.equal(uploaded.sha256, sha256);
  assert.equal(uploaded.uploadedBy, 'a');
  assert.deepEqual(uploaded.meta, meta);

  const latest = await b.downloadBackup();
  assert.deepEqual(latest.bytes, bytes);
  assert.equal(latest.backupId, uploaded.backupId);
  assert.equal(latest.sha256, sha256);
  assert.equal(latest.createdAt, uploaded.createdAt);
  assert.deepEqual(latest.meta, meta);
  assert.deepEqual((await a.downloadBackup(uploaded.backupId)).bytes, bytes);
  assert.equal(await b.downloadBackup(undefined, { ifNoneMatch: sha256 }), null);
  assert.deepEqual((await b.listBackups()).map((r) => r.backupId), [uploaded.backupId]);

  const empty = await b.uploadBackup(new ArrayBuffer(0));
  assert.equal(empty.meta, undefined);
  const back = await a.downloadBackup();
  assert.equal(back.backupId, empty.backupId);
  assert.equal(back.bytes.length, 0);
  await assert.rejects(a.downloadBackup('AAAAAAAAAAAAAAAAAAAAAA'), { code: 'backup_not_found', status: 404 });
});

test('a resumable (tus) upload goes on from what the server kept after a lost answer', async () => {
  const couple = await pair(server.base);
  const MIB = 1 << 20;
  const bytes = new Uint8Array(randomBytes(3 * MIB));
  const patches = [];
  // The second PATCH reaches the server with half its bytes, and its answer is lost.
  const flaky = async (url, init) => {
    if (init.method !== 'PATCH') return fetch(url, init);
    patches.push(Number(init.headers['upload-offset']));
    if (patches.length !== 2) return fetch(url, init);
    await fetch(url, { ...init, body: init.body.subarray(0, MIB / 2) });
    throw new TypeError('fetch failed');
  };
  const a = client(couple, 'a', { fetch: flaky });
  const urls = [];
  const done = await a.uploadBackupResumable(bytes, { meta: { v: 3 }, onUploadUrl: (u) => urls.push(u) });
  assert.deepEqual(patches, [0, MIB, MIB + MIB / 2, 2 * MIB + MIB / 2], 'resumed at the offset the server kept');
  assert.match(urls[0], /\/api\/backup\/uploads\/[A-Za-z0-9_-]+$/);
  assert.equal(done.uploadUrl, urls[0]);
  const latest = await client(couple, 'b').downloadBackup();
  assert.equal(latest.backupId, done.backupId);
  assert.deepEqual(latest.bytes, bytes);
  assert.deepEqual(latest.meta, { v: 3 });
  // Resuming a published upload (its answer lost, say): the server remembers it.
  const again = await a.uploadBackupResumable(bytes, { uploadUrl: urls[0], retries: 0 });
  assert.equal(again.backupId, done.backupId);
  assert.equal((await a.listBackups()).length, 1, 'published once');
});

test('revocation: the revoked client gets 4003 and stops reconnecting', async () => {
  const { couple, ctl, a, b } = await joinedPair();
  await next(a, 'peer-joined');

  const left = next(a, 'peer-left');
  await a.revokeDevice('b');
  assert.equal((await next(b, 'revoked')).code, 4003);
  assert.deepEqual(await left, { deviceId: 'b' });
  // The closed state is the last one: no reconnect (the backoff here is at most 200 ms).
  const closed = await next(b, 'state', (s) => s.state === 'closed');
  assert.equal(closed.code, 4003);
  assert.equal(b.rec.events.filter(([t]) => t === 'state').at(-1)[1], closed);
  await none(b, 'state', 1000);
  assert.equal(ctl.sockets.length, 1);
  await assert.rejects(b.send('a', 1), { code: 'closed' });

  // A client started later with the dead token is told on join (invalid_token) and stops too.
  const again = client(couple, 'b', { WebSocket: ctl.WebSocket }).connect();
  assert.equal((await next(again, 'revoked')).code, 'invalid_token');
  assert.equal(again.state, 'closed');
  await none(again, 'state', 500);
  assert.equal(ctl.sockets.length, 2);
});

test('replaced: a newer socket of the same device closes the older client with 4000, for good', async () => {
  const couple = await pair(server.base);
  const ctl = sockets();
  const old = client(couple, 'b', { WebSocket: ctl.WebSocket }).connect();
  await next(old, 'joined');
  const newer = client(couple, 'b').connect();
  await next(newer, 'joined');
  const closed = await next(old, 'state', (s) => s.state === 'closed');
  assert.equal(closed.code, 4000);
  assert.equal((await next(old, 'error')).code, 'replaced');
  await none(old, 'state', 500);
  assert.equal(ctl.sockets.length, 1, 'the replaced client did not reconnect');
  await assert.rejects(old.send('a', 1), { code: 'closed' });
  assert.equal(newer.state, 'joined');
});

test('mailbox_full is retried later with the same id, until the recipient catches up', async () => {
  const small = await startServer({ MAILBOX_MAX_SIGNALS: '4' });
  try {
    const couple = await pair(small.base);
    const ctl = sockets();
    const a = client(couple, 'a', { baseUrl: small.base, WebSocket: ctl.WebSocket }).connect();
    await next(a, 'joined');
    // b is offline: its mailbox takes 4; the other sends are refused and retried.
    const sends = range(10).map((i) => a.send('b', i));
    await ctl.until(() => ctl.received.some((f) => f.type === 'error' && f.code === 'mailbox_full'), 'a mailbox_full');
    const b = client(couple, 'b', { baseUrl: small.base }).connect();
    await next(b, 'joined');
    await bounded(Promise.all(sends), 'every send accepted');
    await a.send('b', 'end');
    await nSignals(b, 11);
    const got = payloadsOf(b);
    assert.equal(got.at(-1), 'end');
    assert.deepEqual(got.slice(0, 10).sort((x, y) => x - y), range(10));
    const retried = ctl.sent.filter((m) => m.type === 'webrtc-signal').length;
    assert.ok(retried > 11, `${retried} frames for 11 signals`);
  } finally {
    await Promise.all(open.splice(0).map((c) => c.close()));
    await small.stop();
  }
});
