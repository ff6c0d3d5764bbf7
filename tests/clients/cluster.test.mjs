// Cluster mode (REDIS_URL) through the app's own clients: two instances of the real binary
// share one MongoDB database and one Redis key prefix, and devices on different instances
// relay to each other, see each other come and go, and keep one socket per device across
// instances and transports. docs/operations.md "Running several instances (cluster mode)",
// docs/protocol.md §5 and §12.
//
// Needs OM_TEST_MONGODB_URI and OM_TEST_REDIS_URL (.ci/test starts the services and exports
// them). Without them the tests are skipped, loudly; under CI=true they fail instead.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { bounded, call, connect, next, seen, wsConnect } from './clients.mjs';
import { joinBody, pair, startServer } from './server.mjs';

const SERVICES = ['OM_TEST_MONGODB_URI', 'OM_TEST_REDIS_URL'];
const missing = SERVICES.filter((name) => !process.env[name]);

/** The two instances, started once for the file (only when the services are there). */
const instances = [];
before(async () => {
  if (missing.length > 0) return;
  const unique = `${process.pid.toString(36)}-${randomBytes(4).toString('hex')}`;
  const shared = {
    MONGODB_URI: process.env.OM_TEST_MONGODB_URI,
    MONGODB_DB: `om_clients_cluster_${unique.replace('-', '_')}`,
    REDIS_URL: process.env.OM_TEST_REDIS_URL,
    REDIS_KEY_PREFIX: `om-clients-${unique}`,
  };
  // Pushed one by one, so `after` stops the first even if the second fails to start.
  instances.push(await startServer({ ...shared, INSTANCE_ID: 'i1' }));
  instances.push(await startServer({ ...shared, INSTANCE_ID: 'i2' }));
});
after(async () => {
  await Promise.all(instances.map((server) => server.stop()));
});

/** The two instances' base URLs, or `null` after a loud skip (a failure under CI). */
function cluster(t) {
  if (missing.length > 0) {
    const what = `${missing.join(' and ')} not set (.ci/test starts the test services and exports them)`;
    if (process.env.CI === 'true') throw new Error(`${what}: CI never skips the cluster tests`);
    t.skip(`SKIPPED: ${what}`);
    return null;
  }
  return instances.map((server) => server.base);
}

/** Every server log line of both instances, for failure messages. */
function logs() {
  return instances.map((s, i) => `--- instance ${i + 1} ---\n${s.logs.join('\n')}`).join('\n');
}

/** Connects `device` to `base` over Socket.IO, WebSocket only (no sticky sessions in a
 * cluster), and joins with a callback. */
async function joined(base, couple, device, lastSeq) {
  const { socket, error } = await connect(base, { transports: ['websocket'] });
  assert.equal(error, null, `connect to ${base}: ${error?.message}`);
  const answer = await call(socket, 'join-couple', joinBody(couple, device, lastSeq));
  assert.equal(answer.error, undefined, `join ${device}: ${JSON.stringify(answer.error)}`);
  return { socket, answer };
}

/** A test on the two instances (skipped loudly without the services, see `cluster`):
 * `body({ one, two, couple, joined, wsConnect })` with the instances' base URLs, a couple paired
 * on instance 1, and `joined` / `wsConnect` as above and in clients.mjs, whose sockets are
 * closed when the test ends. A failure carries both instances' logs. */
function scenario(name, body) {
  test(name, async (t) => {
    const bases = cluster(t);
    if (!bases) return;
    const [one, two] = bases;
    const couple = await pair(one);
    const sockets = [];
    const wss = [];
    try {
      await body({
        one,
        two,
        couple,
        joined: async (...args) => {
          const done = await joined(...args);
          sockets.push(done.socket);
          return done;
        },
        wsConnect: async (base) => {
          const ws = await wsConnect(base);
          wss.push(ws);
          return ws;
        },
      });
    } catch (e) {
      e.message += `\n${logs()}`;
      throw e;
    } finally {
      sockets.forEach((s) => s.disconnect());
      wss.forEach((ws) => ws.terminate());
    }
  });
}

scenario('Socket.IO devices on two instances: relay both ways with acks, presence across', async ({ one, two, couple, joined }) => {
  const { socket: a, answer: aJoined } = await joined(one, couple, 'a');
  assert.deepEqual(aJoined, { coupleId: couple.id, deviceId: 'a', peers: [], recovered: true });
  const bJoined = await joined(two, couple, 'b');
  const b = bJoined.socket;
  // b (instance 2) sees a (instance 1) as connected; a hears that b came.
  assert.deepEqual(bJoined.answer, { coupleId: couple.id, deviceId: 'b', peers: ['a'], recovered: true });
  assert.deepEqual(await next(a, 'peer-joined'), { deviceId: 'b' });

  // a -> b: every signal answered with its id and seq, delivered in order with the same seqs.
  const n = 20;
  const toB = [];
  const answers = [];
  for (let i = 0; i < n; i += 1) {
    answers.push(call(a, 'webrtc-signal', { to: 'b', payload: { n: i }, id: `a-${i}` }));
  }
  const acks = await Promise.all(answers);
  acks.forEach((ack, i) => {
    assert.equal(ack.error, undefined, JSON.stringify(ack.error));
    assert.equal(ack.id, `a-${i}`);
    assert.equal(typeof ack.seq, 'number');
  });
  const seqs = acks.map((ack) => ack.seq);
  assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, 'seqs grow in send order');
  for (let i = 0; i < n; i += 1) toB.push(await next(b, 'webrtc-signal'));
  assert.deepEqual(
    toB,
    seqs.map((seq, i) => ({ from: 'a', payload: { n: i }, seq, id: `a-${i}` })),
  );

  // b -> a, with an id, and without one (the server names it in the answer).
  const back = await call(b, 'webrtc-signal', { to: 'a', payload: { type: 'answer' }, id: 'b-0' });
  assert.equal(back.id, 'b-0');
  assert.deepEqual(await next(a, 'webrtc-signal'), { from: 'b', payload: { type: 'answer' }, seq: back.seq, id: 'b-0' });
  const unnamed = await call(b, 'webrtc-signal', { to: 'a', payload: 'candidate' });
  assert.equal(typeof unnamed.id, 'string');
  assert.deepEqual(await next(a, 'webrtc-signal'), { from: 'b', payload: 'candidate', seq: unnamed.seq, id: unnamed.id });
  // Cumulative acks through the callback.
  assert.deepEqual(await call(b, 'ack', { seq: seqs.at(-1) }), { seq: seqs.at(-1) });
  assert.deepEqual(await call(a, 'ack', { seq: unnamed.seq }), { seq: unnamed.seq });

  // b leaves instance 2: a, on instance 1, is told.
  b.disconnect();
  assert.deepEqual(await next(a, 'peer-left'), { deviceId: 'b' });
  // Nobody was told anything went wrong.
  assert.deepEqual([...seen(a, 'error'), ...seen(b, 'error')], []);
});

scenario('one socket per device across instances and transports: Socket.IO on 2 replaces /ws on 1', async ({ one, two, couple, joined, wsConnect }) => {
  const { socket: a } = await joined(one, couple, 'a');
  // b over /ws on instance 1, relaying with a before it is replaced.
  const ws = await wsConnect(one);
  ws.json({ type: 'join-couple', ...joinBody(couple, 'b') });
  assert.deepEqual(await ws.frame('joined'), { type: 'joined', coupleId: couple.id, deviceId: 'b', peers: ['a'], recovered: true });
  assert.deepEqual(await next(a, 'peer-joined'), { deviceId: 'b' });
  const first = await call(a, 'webrtc-signal', { to: 'b', payload: 'to ws', id: 'a-ws' });
  assert.deepEqual(await ws.frame('webrtc-signal'), { type: 'webrtc-signal', from: 'a', payload: 'to ws', seq: first.seq, id: 'a-ws' });
  ws.json({ type: 'webrtc-signal', to: 'a', payload: 'from ws', id: 'b-ws' });
  assert.deepEqual(await ws.frame('accepted'), { type: 'accepted', id: 'b-ws' });
  assert.equal((await next(a, 'webrtc-signal')).payload, 'from ws');

  // The same device joins over Socket.IO on instance 2: the /ws socket on instance 1 is
  // closed with 4000, and the new socket is joined (a is still there, b's signal is acked).
  const { socket: b, answer } = await joined(two, couple, 'b', first.seq);
  assert.deepEqual(answer, { coupleId: couple.id, deviceId: 'b', peers: ['a'], recovered: true });
  assert.deepEqual(await bounded(ws.closed, '/ws close'), { code: 4000, reason: 'replaced by a newer connection' });
  assert.deepEqual(ws.frames.filter((f) => f.type !== 'pong'), [], 'nothing else reached the replaced /ws socket');

  // Signals now reach the Socket.IO socket on instance 2, both ways.
  const ack = await call(a, 'webrtc-signal', { to: 'b', payload: 'to socket.io', id: 'a-sio' });
  assert.equal(ack.id, 'a-sio');
  assert.ok(ack.seq > first.seq, `seq ${ack.seq} after ${first.seq}`);
  assert.deepEqual(await next(b, 'webrtc-signal'), { from: 'a', payload: 'to socket.io', seq: ack.seq, id: 'a-sio' });
  const back = await call(b, 'webrtc-signal', { to: 'a', payload: 'from socket.io', id: 'b-sio' });
  assert.equal(back.id, 'b-sio');
  assert.deepEqual(await next(a, 'webrtc-signal'), { from: 'b', payload: 'from socket.io', seq: back.seq, id: 'b-sio' });
  // A device replacing its own socket is not a peer leaving or joining (§5.2, §5.6):
  // by the time b's later signal reached a, no presence change for b had.
  assert.deepEqual(seen(a, 'peer-left'), [], 'a was told b left when b only replaced its socket');
  assert.deepEqual(seen(a, 'peer-joined'), [], 'a was told b joined again when b only replaced its socket');
  // The new socket was not kicked, and a was told nothing went wrong.
  assert.deepEqual([...seen(a, 'error'), ...seen(b, 'error'), ...seen(b, 'disconnect')], []);
});

scenario('and the other way round: /ws on 1 replaces Socket.IO on 2 (error `replaced`, disconnected)', async ({ one, two, couple, joined, wsConnect }) => {
  const { socket: a } = await joined(one, couple, 'a');
  const { socket: b } = await joined(two, couple, 'b');
  assert.deepEqual(await next(a, 'peer-joined'), { deviceId: 'b' });
  const ws = await wsConnect(one);
  ws.json({ type: 'join-couple', ...joinBody(couple, 'b') });
  assert.deepEqual(await ws.frame('joined'), { type: 'joined', coupleId: couple.id, deviceId: 'b', peers: ['a'], recovered: true });
  // The Socket.IO socket on instance 2 is told, then disconnected by the server.
  assert.equal((await next(b, 'error')).code, 'replaced');
  assert.equal(await next(b, 'disconnect'), 'io server disconnect');
  // Signals reach the /ws socket now.
  const ack = await call(a, 'webrtc-signal', { to: 'b', payload: 'to ws', id: 'a-ws' });
  assert.deepEqual(await ws.frame('webrtc-signal'), { type: 'webrtc-signal', from: 'a', payload: 'to ws', seq: ack.seq, id: 'a-ws' });
  assert.deepEqual(seen(b, 'webrtc-signal'), [], 'the replaced Socket.IO socket got the signal');
  assert.deepEqual(seen(a, 'peer-left'), [], 'a was told b left when b only replaced its socket');
});
