// The real server binary for the client tests: started on a free loopback port with a fresh
// DATA_DIR (production logs: JSON lines), stopped by pid. Plus thin helpers for the REST
// routes the tests need (pairing, signals, metrics).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
/** The binary under test: OM_SERVER_BIN, or the workspace's debug build. */
export const BIN = process.env.OM_SERVER_BIN ?? resolve(here, '../../target/debug/our-memories');
/** The longest a test waits for any one thing. */
export const WAIT_MS = 10_000;

/** Starts the server with `env` on top of a test configuration; resolves once it listens. */
export async function startServer(env = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'om-client-test-'));
  const child = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      HOST: '127.0.0.1',
      PORT: '0',
      DATA_DIR: dataDir,
      NODE_ENV: 'production',
      SIGNALING_SECRET: 'client-tests-secret-0123456789abcdef-0123456789',
      RUST_LOG: 'info',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const lines = createInterface({ input: child.stderr });
  const logs = [];
  const addr = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`no "listening" line:\n${logs.join('\n')}`)), WAIT_MS);
    child.once('exit', (code) => fail(new Error(`server exited with ${code}:\n${logs.join('\n')}`)));
    lines.on('line', (line) => {
      logs.push(line);
      if (line.includes('"listening"')) {
        clearTimeout(timer);
        ok(JSON.parse(line).addr);
      }
    });
  });
  const base = `http://${addr}`;
  return {
    base,
    logs,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((ok) => child.once('exit', ok));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

async function post(base, path, body, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  return fetch(`${base}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
}

/** Pairs devices `a` and `b` (more ids add more devices); returns the couple and tokens. */
export async function pair(base, ...more) {
  const started = await (await post(base, '/api/pair/initiate', { deviceId: 'a' })).json();
  const couple = { id: started.coupleId, tokens: { a: started.deviceToken } };
  let pairingToken = started.pairingToken;
  for (const device of ['b', ...more]) {
    if (device !== 'b') {
      const again = await post(base, '/api/pair/initiate', { deviceId: 'a' }, couple.tokens.a);
      pairingToken = (await again.json()).pairingToken;
    }
    const confirmed = await post(base, '/api/pair/confirm', {
      coupleId: couple.id,
      pairingToken,
      deviceId: device,
    });
    if (confirmed.status !== 200) throw new Error(`confirm ${device}: ${confirmed.status}`);
    couple.tokens[device] = (await confirmed.json()).deviceToken;
  }
  return couple;
}

/** The `auth` / `join-couple` object of `device`. */
export function joinBody(couple, device, lastSeq) {
  const body = { coupleId: couple.id, deviceId: device, token: couple.tokens[device] };
  if (lastSeq !== undefined) body.lastSeq = lastSeq;
  return body;
}

/** `POST /api/signal` from `from` to `to`. */
export async function restSignal(base, couple, from, to, payload) {
  const res = await post(
    base,
    '/api/signal',
    { coupleId: couple.id, fromDeviceId: from, toDeviceId: to, signalPayload: payload },
    couple.tokens[from],
  );
  return { status: res.status, body: await res.json() };
}

/** The value of one series in `GET /metrics` (0 when absent). */
export async function metric(base, series) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ')[1]) : 0;
}
