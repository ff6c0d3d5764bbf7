// The demo page (/demo/) in headless Chromium (browser.mjs): two pages pair through the real
// server and open a WebRTC data channel, directly and through a real coturn with the TURN
// credentials the server issues; a reload resumes without losing a signal; the origin rule and
// the production switch.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { channelOpen, launch, openPage, pairedPages, sendFile, sendText, waitIn } from './browser.mjs';
import { startServer, WAIT_MS } from './server.mjs';

const TURN_SECRET = 'browser-tests-turn-secret-0123456789';
const MIB = 1024 * 1024;

let browser;
const scratch = mkdtempSync(join(tmpdir(), 'om-browser-test-'));
const started = Date.now();

before(async () => {
  browser = await launch();
});

after(async () => {
  await browser?.close();
  rmSync(scratch, { recursive: true, force: true });
  console.log(`browser tests took ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

/** The type of the local candidate of the pair the connection uses. */
function localCandidateType(page) {
  return page.evaluate(async () => {
    const stats = await window.demo.pc.getStats();
    const pair = [...stats.values()].find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
    return stats.get(pair.localCandidateId).candidateType;
  });
}

test('two demo pages pair, join, and exchange text and a 1 MiB file both ways', async () => {
  const server = await startServer({ DEMO: 'on' });
  try {
    const { alice, bob, close } = await pairedPages(browser, server);
    assert.equal(await alice.$eval('#peers', (el) => el.textContent), 'bob');
    assert.equal(await bob.$eval('#server-state', (el) => el.textContent), 'joined (ws)');
    await sendText(alice, bob, 'hello from alice');
    await sendText(bob, alice, 'hello from bob');
    await sendFile(scratch, alice, bob, 'from-alice.bin', randomBytes(MIB));
    await sendFile(scratch, bob, alice, 'from-bob.bin', randomBytes(MIB));
    assert.deepEqual([alice.problems, bob.problems], [[], []]);
    await close();
  } finally {
    await server.stop();
  }
});

/** coturn on loopback with the TURN REST secret; stopped by pid. */
async function startTurn() {
  const dir = mkdtempSync(join(scratch, 'turn-'));
  const port = await freePort();
  const relay = await freePort();
  const child = spawn(
    join(process.env.OM_TEST_COTURN_BIN ?? '/usr/bin', 'turnserver'),
    [
      '-n',
      '--listening-ip=127.0.0.1',
      `--listening-port=${port}`,
      '--relay-ip=127.0.0.1',
      `--min-port=${relay}`,
      `--max-port=${relay + 20}`,
      '--use-auth-secret',
      `--static-auth-secret=${TURN_SECRET}`,
      '--realm=our-memories.test',
      // Only for this loopback test: production must keep loopback peers denied.
      '--allow-loopback-peers',
      '--no-tls',
      '--no-dtls',
      '--no-cli',
      `--log-file=${join(dir, 'turn.log')}`,
      '--simple-log',
      `--userdb=${join(dir, 'turndb')}`,
    ],
    { stdio: 'ignore' },
  );
  await listening(port, child);
  return {
    url: `turn:127.0.0.1:${port}?transport=udp`,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((ok) => child.once('exit', ok));
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

function freePort() {
  return new Promise((ok) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Waits (bounded) until something accepts TCP connections on `port`. */
async function listening(port, child) {
  const { connect } = await import('node:net');
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`turnserver exited with ${child.exitCode}`);
    const ok = await new Promise((done) => {
      const c = connect(port, '127.0.0.1', () => (c.destroy(), done(true)));
      c.on('error', () => done(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error('turnserver did not listen');
    await new Promise((wake) => setTimeout(wake, 50));
  }
}

test('relay only: the channel opens through coturn with the credentials the server issues', async () => {
  const turn = await startTurn();
  const server = await startServer({ DEMO: 'on', TURN_URLS: turn.url, TURN_SECRET });
  try {
    const { alice, bob, close } = await pairedPages(browser, server, { query: '?relay=1' });
    assert.equal(await localCandidateType(alice), 'relay');
    assert.equal(await localCandidateType(bob), 'relay');
    await sendText(alice, bob, 'relayed');
    await sendFile(scratch, bob, alice, 'relayed.bin', randomBytes(MIB));
    await close();
  } finally {
    await server.stop();
    await turn.stop();
  }
});

test('relay only with a wrong TURN secret: coturn refuses (401) and no channel opens', async () => {
  const turn = await startTurn();
  const server = await startServer({ DEMO: 'on', TURN_URLS: turn.url, TURN_SECRET: `not-${TURN_SECRET}` });
  try {
    const { alice, bob, close } = await pairedPages(browser, server, { query: '?relay=1', open: false });
    for (const page of [alice, bob]) {
      await waitIn(page, () => window.demo.pc && window.demo.iceErrors.some((e) => e.errorCode === 401));
    }
    assert.notEqual(await alice.evaluate(() => window.demo.channel), 'open');
    assert.notEqual(await bob.evaluate(() => window.demo.channel), 'open');
    await close();
  } finally {
    await server.stop();
    await turn.stop();
  }
});

test('a page that reloads resumes: the signals sent while it was away arrive once, in order', async () => {
  const server = await startServer({ DEMO: 'on' });
  try {
    const { alice, bob, close } = await pairedPages(browser, server);
    // Bob's tab leaves the page (its socket closes) and comes back to it: the same tab keeps
    // the credentials and lastSeq in sessionStorage.
    await bob.goto('about:blank');
    await waitIn(alice, () => !window.demo.peers.includes('bob'));
    await alice.evaluate(async () => {
      for (let n = 1; n <= 5; n += 1) await window.demo.client.send('bob', { kind: 'note', n });
    });
    await bob.goto(`${server.base}/demo/`);
    await waitIn(bob, () => window.demo.notes.length === 5);
    assert.deepEqual(await bob.evaluate(() => window.demo.notes.map((p) => p.n)), [1, 2, 3, 4, 5]);
    // And the call comes back.
    await waitIn(alice, channelOpen);
    await waitIn(bob, channelOpen);
    await sendText(bob, alice, 'back again');
    // A real reload too.
    await alice.reload();
    await waitIn(alice, channelOpen);
    await waitIn(bob, channelOpen);
    await sendText(alice, bob, 'reloaded');
    assert.deepEqual(await bob.evaluate(() => window.demo.notes.length), 5, 'nothing handed over twice');
    await close();
  } finally {
    await server.stop();
  }
});

/** A site on another origin (a plain node server, no CSP) whose page opens the WebSocket
 * named in its query and reports `open` or `refused` in `window.outcome`. */
async function foreignSite() {
  const site = createServer((req, res) => {
    if (req.url === '/probe.js') {
      res.setHeader('content-type', 'text/javascript');
      res.end(`const s = new WebSocket(new URLSearchParams(location.search).get('ws'));
        s.onopen = () => { window.outcome = 'open'; };
        s.onerror = () => { window.outcome = 'refused'; };`);
    } else {
      res.setHeader('content-type', 'text/html');
      res.end('<!doctype html><script src="/probe.js"></script>');
    }
  });
  await new Promise((ok) => site.listen(0, '127.0.0.1', ok));
  return { origin: `http://127.0.0.1:${site.address().port}`, close: () => new Promise((ok) => site.close(ok)) };
}

/** A log line (JSON) of a `/ws` request answered 403. */
function refusedUpgrade(line) {
  const entry = JSON.parse(line);
  return entry.message === 'answered' && entry.status === 403 && entry.span?.path === '/ws';
}

test('a page whose origin is not in ALLOWED_ORIGINS cannot open /ws; a listed one can', async () => {
  const site = await foreignSite();
  try {
    for (const listed of [false, true]) {
      const server = await startServer({ ALLOWED_ORIGINS: listed ? site.origin : 'https://app.example' });
      try {
        const ws = encodeURIComponent(`${server.base.replace('http:', 'ws:')}/ws`);
        const { context, page } = await openPage(browser, site.origin, `${site.origin}/?ws=${ws}`);
        assert.equal(await waitIn(page, () => window.outcome), listed ? 'open' : 'refused');
        assert.equal(server.logs.some(refusedUpgrade), !listed);
        await context.close();
      } finally {
        await server.stop();
      }
    }
  } finally {
    await site.close();
  }
});

test('the demo is 404 in production unless DEMO=on', async () => {
  const server = await startServer();
  try {
    const { context, response } = await openPage(browser, server.base, `${server.base}/demo/`);
    assert.equal(response.status(), 404);
    await context.close();
  } finally {
    await server.stop();
  }
});
