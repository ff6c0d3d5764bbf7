// The client side of the client tests: socket.io-client sockets and JSON WebSockets (`/ws`)
// whose every event or frame is buffered from the start, so none is missed before a test looks
// for it, and the waits the tests build on (each at most WAIT_MS).
import { io } from 'socket.io-client';
import WebSocket from 'ws';
import { WAIT_MS } from './server.mjs';

/** Waits for `found()` to return something other than `undefined`, woken by `waiters`. */
export async function until(waiters, found, what) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = found();
    if (value !== undefined) return value;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no ${what} within ${WAIT_MS} ms`);
    await new Promise((wake) => {
      const timer = setTimeout(wake, left);
      waiters.push(() => (clearTimeout(timer), wake()));
    });
  }
}

/** Waits for `promise`, at most WAIT_MS (for promises with no timeout of their own). */
export function bounded(promise, what) {
  let timer;
  const timeout = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A socket.io-client socket to `base` (no reconnection, a connection of its own), connected or
 * refused: then `error` is the connect_error. Every event, and `disconnect` with its reason, is
 * buffered in `socket.buffered` from the start. */
export async function connect(base, options = {}) {
  const socket = io(base, { reconnection: false, forceNew: true, autoConnect: false, ...options });
  socket.buffered = [];
  socket.waiters = [];
  const buffer = (event, body) => {
    socket.buffered.push([event, body]);
    socket.waiters.splice(0).forEach((wake) => wake());
  };
  socket.onAny(buffer);
  socket.on('disconnect', (reason) => buffer('disconnect', reason));
  socket.connect();
  const error = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('neither connect nor connect_error')), WAIT_MS);
    socket.once('connect', () => (clearTimeout(timer), ok(null)));
    socket.once('connect_error', (e) => (clearTimeout(timer), ok(e)));
  });
  return { socket, error };
}

/** The next `event` on a socket.io `socket` (buffered or still to come). */
export function next(socket, event) {
  return until(
    socket.waiters,
    () => {
      const i = socket.buffered.findIndex(([e]) => e === event);
      return i >= 0 ? socket.buffered.splice(i, 1)[0][1] : undefined;
    },
    `${event} on the Socket.IO socket`,
  );
}

/** The next `n` `webrtc-signal` events on `socket`. */
export async function signals(socket, n) {
  const got = [];
  while (got.length < n) got.push(await next(socket, 'webrtc-signal'));
  return got;
}

/** The events named `event` a socket.io `socket` has buffered (without taking them). */
export function seen(socket, event) {
  return socket.buffered.filter(([e]) => e === event).map(([, body]) => body);
}

/** Emits with a callback and resolves with its answer (a timeout names what was sent). */
export async function call(socket, event, body) {
  try {
    return await socket.timeout(WAIT_MS).emitWithAck(event, body);
  } catch (e) {
    e.message = `${event} ${JSON.stringify(body)} from ${socket.io.uri}: ${e.message}`;
    throw e;
  }
}

/** A JSON WebSocket (`/ws`) to `base`, open, its frames buffered in `ws.frames`; `ws.frame(type)`
 * is the next frame of `type`, `ws.json(message)` sends one, `ws.closed` resolves with the close
 * code and reason. */
export async function wsConnect(base) {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/ws`);
  const frames = [];
  const waiters = [];
  const wake = () => waiters.splice(0).forEach((w) => w());
  ws.on('message', (data) => {
    frames.push(JSON.parse(data.toString()));
    wake();
  });
  ws.closed = new Promise((ok) => ws.once('close', (code, reason) => ok({ code, reason: reason.toString() })));
  await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('/ws did not open')), WAIT_MS);
    ws.once('open', () => (clearTimeout(timer), ok()));
    ws.once('error', (e) => (clearTimeout(timer), fail(e)));
  });
  ws.json = (message) => ws.send(JSON.stringify(message));
  ws.frames = frames;
  /** The next frame of `type` (buffered or still to come). */
  ws.frame = (type) =>
    until(
      waiters,
      () => {
        const i = frames.findIndex((f) => f.type === type);
        return i >= 0 ? frames.splice(i, 1)[0] : undefined;
      },
      `${type} frame on /ws`,
    );
  return ws;
}
