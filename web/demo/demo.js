// The demo page (served at /demo/): pairs two browsers through the server, then opens a WebRTC
// data channel between them for text and files. The server only relays the offer, the answer
// and the ICE candidates (docs/protocol.md §5), with the reference client our-memories.js.
//
// Negotiation: the device whose id sorts first makes the offer, whenever it learns that its
// peer is online (its own join, or `peer-joined`); every offer starts a new session (a random
// id), and signals of any other session are ignored, so a reload on either side simply starts
// again. Data channel messages: JSON text `{"t":"text","text"}`, and a file as
// `{"t":"file","name","size","type"}` followed by binary chunks of 16 KiB.
//
// `window.demo` exposes the page's state for the browser tests (tests/clients/browser.test.mjs).
import { Client, pairConfirm, pairInitiate } from './our-memories.js';

const $ = (id) => document.getElementById(id);
/** sessionStorage key: the credentials and `lastSeq` survive a reload of this tab only. */
const STORE = 'om-demo';
const CHUNK = 16 * 1024;
/** The sender waits while more than this is queued in the channel. */
const HIGH_WATER = 1024 * 1024;
/** Files are held in memory on both sides: keep them small. */
const MAX_FILE = 64 * 1024 * 1024;

const demo = {
  client: null,
  creds: null,
  server: 'idle',
  peers: [],
  peer: null,
  session: null,
  pc: null,
  pcState: 'new',
  channel: 'closed',
  texts: [],
  files: [],
  iceErrors: [],
  /** Signals that are not the demo's own (offer, answer, candidate), in order. */
  notes: [],
  /** Candidates not yet given to a connection (their session's description is not set). */
  early: [],
  incoming: null,
};
window.demo = demo;

function randomId(n = 12) {
  const bytes = crypto.getRandomValues(new Uint8Array(n));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function show(id, visible) {
  $(id).hidden = !visible;
}

function fail(error) {
  const el = $('error');
  el.textContent = error && error.code ? `${error.code}: ${error.message}` : String(error);
  el.hidden = false;
}

function log(text, cls = 'sys') {
  const p = document.createElement('p');
  p.className = cls;
  p.textContent = text;
  $('log').append(p);
  $('log').scrollTop = $('log').scrollHeight;
  return p;
}

function setText(id, text) {
  $(id).textContent = text;
}

function relayOnly() {
  return $('relay').checked;
}

// ---- pairing ------------------------------------------------------------------------------

async function startPairing() {
  const deviceId = $('device-id').value.trim();
  const started = await pairInitiate(location.origin, deviceId);
  const code = `${started.coupleId}:${started.pairingToken}`;
  setText('code-out', code);
  const link = `${location.origin}/demo/${location.search}#pair=${code}`;
  $('link').href = link;
  setText('link', link);
  show('pairing', true);
  begin({ coupleId: started.coupleId, deviceId, token: started.deviceToken, lastSeq: 0 });
}

async function confirmPairing() {
  const deviceId = $('device-id').value.trim();
  const [coupleId, pairingToken] = $('code-in').value.trim().split(':');
  if (!coupleId || !pairingToken) throw new Error('a pairing code looks like coupleId:token');
  const done = await pairConfirm(location.origin, { coupleId, pairingToken, deviceId });
  begin({ coupleId: done.coupleId, deviceId, token: done.deviceToken, lastSeq: 0 });
}

// ---- the server connection ----------------------------------------------------------------

function save() {
  sessionStorage.setItem(STORE, JSON.stringify(demo.creds));
}

function begin(creds) {
  demo.creds = creds;
  save();
  show('setup', false);
  show('call', true);
  setText('me', `${creds.deviceId} (couple ${creds.coupleId})`);
  const client = new Client({
    baseUrl: location.origin,
    coupleId: creds.coupleId,
    deviceId: creds.deviceId,
    token: creds.token,
    lastSeq: creds.lastSeq,
    onSignal: (s) => onSignal(s).catch(fail),
  });
  demo.client = client;
  client.on('state', ({ state }) => {
    demo.server = state;
    setText('server-state', client.transport ? `${state} (${client.transport})` : state);
  });
  client.on('signal', () => {
    demo.creds.lastSeq = client.lastSeq;
    save();
  });
  client.on('joined', ({ peers }) => {
    setPeers(peers);
    if (peers.length > 0) call(peers[0], false);
  });
  client.on('peer-joined', ({ deviceId }) => {
    setPeers([...demo.peers.filter((p) => p !== deviceId), deviceId]);
    show('pairing', false);
    call(deviceId, true);
  });
  client.on('peer-left', ({ deviceId }) => {
    setPeers(demo.peers.filter((p) => p !== deviceId));
    if (deviceId === demo.peer) log(`${deviceId} went offline`);
  });
  client.on('revoked', () => {
    sessionStorage.removeItem(STORE);
    fail('this device was revoked: pair again');
  });
  client.on('error', ({ code, message }) => log(`server: ${code} ${message ?? ''}`));
  client.connect();
}

function setPeers(peers) {
  demo.peers = peers;
  setText('peers', peers.length ? peers.join(', ') : 'none');
}

function signal(payload) {
  return demo.client.send(demo.peer, payload).catch(fail);
}

// ---- WebRTC -------------------------------------------------------------------------------

/** The offer side: the device whose id sorts first. `fresh`: the peer has a new socket (it
 * may be a reloaded page), so an existing connection is stale. */
async function call(peer, fresh) {
  demo.peer = peer;
  if (demo.creds.deviceId > peer) return; // the peer offers
  if (!fresh && demo.pc && demo.pcState === 'connected') return;
  const session = randomId();
  const pc = await connection(session);
  useChannel(pc.createDataChannel('memories', { ordered: true }));
  await pc.setLocalDescription(await pc.createOffer());
  signal({ kind: 'offer', session, sdp: pc.localDescription.sdp });
}

/** A new peer connection for `session`, replacing the current one. */
async function connection(session) {
  demo.pc?.close();
  demo.session = session;
  let iceServers = [];
  try {
    iceServers = await demo.client.getIceServers();
  } catch (e) {
    log(`no ICE servers (${e.code ?? e}); trying without`);
  }
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: relayOnly() ? 'relay' : 'all' });
  demo.pc = pc;
  const current = () => demo.pc === pc;
  pc.addEventListener('icecandidate', ({ candidate }) => {
    if (candidate && current()) signal({ kind: 'candidate', session, candidate: candidate.toJSON() });
  });
  pc.addEventListener('icecandidateerror', (e) => {
    demo.iceErrors.push({ errorCode: e.errorCode, url: e.url, errorText: e.errorText });
    log(`ICE server ${e.url}: ${e.errorCode} ${e.errorText}`);
  });
  pc.addEventListener('connectionstatechange', () => {
    if (!current()) return;
    demo.pcState = pc.connectionState;
    setText('pc-state', pc.connectionState);
  });
  pc.addEventListener('datachannel', ({ channel }) => {
    if (current()) useChannel(channel);
  });
  demo.pcState = pc.connectionState;
  setText('pc-state', pc.connectionState);
  return pc;
}

async function onSignal({ from, payload }) {
  if (from !== demo.peer) demo.peer = from;
  const { kind, session } = payload ?? {};
  if (kind === 'offer') {
    const pc = await connection(session);
    await pc.setRemoteDescription({ type: 'offer', sdp: payload.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    signal({ kind: 'answer', session, sdp: pc.localDescription.sdp });
    await addCandidates();
  } else if (kind === 'answer') {
    if (session !== demo.session) return;
    await demo.pc.setRemoteDescription({ type: 'answer', sdp: payload.sdp });
    await addCandidates();
  } else if (kind === 'candidate') {
    // Kept until their session's description is set (a candidate may overtake its offer).
    if (demo.early.length >= 64) demo.early.shift();
    demo.early.push({ session, candidate: payload.candidate });
    await addCandidates();
  } else {
    // Not the demo's own: an app's message, e.g. sent from the console with
    // `demo.client.send(peer, {...})`.
    demo.notes.push(payload);
    log(`signal from ${from}: ${JSON.stringify(payload)}`);
  }
}

/** Gives the current connection the kept candidates of its session, once it can take them. */
async function addCandidates() {
  const pc = demo.pc;
  if (!pc?.remoteDescription) return;
  const mine = demo.early.filter((c) => c.session === demo.session);
  demo.early = demo.early.filter((c) => c.session !== demo.session);
  for (const c of mine) await pc.addIceCandidate(c.candidate);
}

// ---- the data channel ---------------------------------------------------------------------

let channel = null;

function useChannel(ch) {
  channel = ch;
  demo.channel = null;
  ch.binaryType = 'arraybuffer';
  ch.bufferedAmountLowThreshold = HIGH_WATER / 4;
  const update = () => {
    if (channel !== ch || demo.channel === ch.readyState) return;
    demo.channel = ch.readyState;
    setText('channel-state', ch.readyState);
    $('send').disabled = ch.readyState !== 'open';
    $('send-file').disabled = ch.readyState !== 'open';
    if (ch.readyState === 'open') log(`connected to ${demo.peer}`);
  };
  ch.addEventListener('open', update);
  ch.addEventListener('close', update);
  ch.addEventListener('message', ({ data }) => receive(data).catch(fail));
  update();
}

async function receive(data) {
  if (typeof data !== 'string') {
    const f = demo.incoming;
    if (!f) return;
    f.parts.push(data);
    f.got += data.byteLength;
    if (f.got >= f.size) await received(f);
    return;
  }
  const m = JSON.parse(data);
  if (m.t === 'text') {
    demo.texts.push(m.text);
    log(`${demo.peer}: ${m.text}`, 'peer');
  } else if (m.t === 'file' && m.size <= MAX_FILE) {
    demo.incoming = { name: m.name, size: m.size, type: m.type, parts: [], got: 0 };
    if (m.size === 0) await received(demo.incoming);
  }
}

async function received(f) {
  demo.incoming = null;
  const blob = new Blob(f.parts, { type: f.type });
  const sha256 = await digest(blob);
  demo.files.push({ name: f.name, size: blob.size, sha256 });
  const p = log(`${demo.peer} sent ${f.name} (${blob.size} bytes) `, 'peer');
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = f.name;
  a.textContent = 'save';
  p.append(a);
  // The CSP allows images from `data:` URLs, not `blob:` ones.
  if (f.type.startsWith('image/') && blob.size <= 8 * 1024 * 1024) {
    const img = document.createElement('img');
    img.alt = f.name;
    img.src = await new Promise((ok) => {
      const r = new FileReader();
      r.onload = () => ok(r.result);
      r.readAsDataURL(blob);
    });
    p.append(img);
  }
}

/** Hex SHA-256, or null where WebCrypto is missing (pages not served from a secure context). */
async function digest(blob) {
  if (!crypto.subtle) return null;
  const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()));
  return Array.from(hash, (b) => b.toString(16).padStart(2, '0')).join('');
}

function sendText(text) {
  channel.send(JSON.stringify({ t: 'text', text }));
  log(`me: ${text}`, 'me');
}

/** Waits until the channel has room (or has closed). */
function room(ch) {
  if (ch.bufferedAmount <= HIGH_WATER || ch.readyState !== 'open') return Promise.resolve();
  return new Promise((ok) => {
    ch.addEventListener('bufferedamountlow', ok, { once: true });
    ch.addEventListener('close', ok, { once: true });
  });
}

async function sendFile(file) {
  if (file.size > MAX_FILE) throw new Error(`the demo sends files up to ${MAX_FILE} bytes`);
  const ch = channel;
  ch.send(JSON.stringify({ t: 'file', name: file.name, size: file.size, type: file.type }));
  const bytes = new Uint8Array(await file.arrayBuffer());
  for (let at = 0; at < bytes.length; at += CHUNK) {
    await room(ch);
    if (ch.readyState !== 'open') throw new Error('the channel closed while sending');
    ch.send(bytes.subarray(at, at + CHUNK));
  }
  log(`me: sent ${file.name} (${file.size} bytes)`, 'me');
}

// ---- the page -----------------------------------------------------------------------------

function on(id, event, handler) {
  $(id).addEventListener(event, (e) => {
    e.preventDefault();
    Promise.resolve()
      .then(handler)
      .catch(fail);
  });
}

on('start', 'click', startPairing);
on('confirm', 'click', confirmPairing);
on('copy', 'click', () => navigator.clipboard.writeText($('code-out').textContent));
on('chat', 'submit', () => {
  const text = $('text').value;
  if (!text || !channel || channel.readyState !== 'open') return;
  sendText(text);
  $('text').value = '';
});
on('files', 'submit', () => {
  const file = $('file').files[0];
  if (file && channel && channel.readyState === 'open') return sendFile(file);
  return undefined;
});
on('forget', 'click', async () => {
  sessionStorage.removeItem(STORE);
  await demo.client?.close();
  location.reload();
});

$('relay').checked = new URLSearchParams(location.search).get('relay') === '1';
$('device-id').value = `browser-${randomId(3)}`;
if (location.hash.startsWith('#pair=')) {
  $('code-in').value = decodeURIComponent(location.hash.slice('#pair='.length));
  // The token is one-time, but keep it out of the history all the same.
  history.replaceState(null, '', location.pathname + location.search);
}
const kept = sessionStorage.getItem(STORE);
if (kept) begin(JSON.parse(kept));
