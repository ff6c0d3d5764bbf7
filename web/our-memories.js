// Our Memories: the reference client for docs/protocol.md. One dependency-free ES module for
// browsers (global WebSocket and fetch) and Node 20+ (pass `WebSocket`, e.g. the `ws` package's
// class). Types: our-memories.d.ts. Every protocol rule this file follows cites its § of
// docs/protocol.md.

const SIGNAL_TTL_MS = 5 * 60_000; // §5.4 SIGNAL_TTL_SECS: expiry and the server's resend memory
const MAX_PAYLOAD_BYTES = 65_536; // §5.4 payload limit, counted as sent
const MAX_META_BYTES = 4096; // §6.1 X-Backup-Meta
const ID = /^[A-Za-z0-9_-]{1,64}$/; // §1 identifiers
const OPEN = 1; // WebSocket.OPEN
// §5.3: signal errors after which the same id is sent again later; any other code is final.
const RETRY_LATER = new Set(['mailbox_full', 'rate_limited', 'storage_unavailable']);
// §5.3, §5.7: the room went away (or we are not in it): rejoin, then resend with the same id.
const REJOIN = new Set(['unavailable', 'not_joined']);
// §5.1: the codes a `join-couple` can fail with (without an id).
const JOIN_ERRORS = new Set(['invalid_request', 'invalid_token', 'forbidden', 'storage_unavailable', 'unavailable']);

/** An error of the protocol (§11 `code`), of the network (`network_error`) or of this client. */
export class OmError extends Error {
  constructor(code, message, { status, retryAfter, id, cause } = {}) {
    super(message || code, cause === undefined ? undefined : { cause });
    this.name = 'OmError';
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
    this.id = id;
  }
}

const trim = (url) => String(url).replace(/\/+$/, '');
const fetchOf = (fn) => fn ?? ((...args) => globalThis.fetch(...args));
// Full jitter: a random delay in [0, min(cap, base × 2^attempt)).
const backoff = (attempt, { baseMs, capMs }) => Math.random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));

/** One HTTP call; a non-2xx answer (except 304) throws an OmError with the §11 code. */
async function http(fetchFn, url, { method = 'GET', token, json, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`; // §2.1
  if (json !== undefined) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(json); // fetch adds the Content-Length the server requires (§1)
  }
  let res;
  try {
    res = await fetchFn(url, { method, headers: h, body });
  } catch (cause) {
    throw new OmError('network_error', `${method} ${url}: ${cause?.message ?? cause}`, { cause });
  }
  if (res.ok || res.status === 304) return res;
  // §1: errors are {"error":{"code","message"}}; switch on code. A proxy may answer otherwise.
  let code = `http_${res.status}`;
  let message = `${method} ${url}: HTTP ${res.status}`;
  try {
    const error = (await res.json())?.error;
    if (typeof error?.code === 'string') ({ code, message = code } = error);
  } catch {}
  const retryAfter = Number(res.headers.get('retry-after')) || undefined; // §8
  throw new OmError(code, message, { status: res.status, retryAfter });
}

/** Worth retrying an HTTP call that failed this way (§4.1, §8, §11). */
const transient = (e) => e.code === 'network_error' || [408, 429, 502, 503, 504].includes(e.status);

/** §3.1: without `token`, creates a couple with `deviceId` as its first device; with the Bearer
 * `token` of a paired device (whose id `deviceId` must be), opens a pairing for one more. */
export async function pairInitiate(baseUrl, deviceId, { token, fetch } = {}) {
  const url = `${trim(baseUrl)}/api/pair/initiate`;
  return (await http(fetchOf(fetch), url, { method: 'POST', token, json: { deviceId } })).json();
}

/** §3.2: joins the couple with the one-time pairing token (from the other device's QR code). */
export async function pairConfirm(baseUrl, { coupleId, pairingToken, deviceId }, { fetch } = {}) {
  const url = `${trim(baseUrl)}/api/pair/confirm`;
  const json = { coupleId, pairingToken, deviceId };
  return (await http(fetchOf(fetch), url, { method: 'POST', json })).json();
}

async function sha256Hex(bytes) {
  const digest = await globalThis.crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}
const canHash = () => Boolean(globalThis.crypto?.subtle); // browsers: secure contexts only

function randomId() {
  const bytes = new Uint8Array(12);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  // 16 characters of [A-Za-z0-9_-] (§1)
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_');
}

/** §6.1: the metadata as `X-Backup-Meta` (and tus `meta`) carry it: JSON, at most 4 KiB, printable
 * ASCII (other characters as \uXXXX escapes). */
function metaText(meta) {
  const text = JSON.stringify(meta).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (text.length > MAX_META_BYTES) throw new OmError('invalid_request', `meta over ${MAX_META_BYTES} bytes`);
  return text;
}

async function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (typeof data?.arrayBuffer === 'function') return new Uint8Array(await data.arrayBuffer()); // Blob
  throw new TypeError('backup bytes must be a Uint8Array, an ArrayBuffer(View) or a Blob');
}

const DEFAULTS = {
  transport: 'auto',
  fallbackAfter: 3,
  backoff: { baseMs: 500, capMs: 30_000 },
  pollIntervalMs: 1000,
  ackDelayMs: 200,
  ackEvery: 16,
  heartbeatMs: 20_000,
  heartbeatTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  sendTimeoutMs: SIGNAL_TTL_MS,
  dedupeIds: true,
};

/** A device's connection to its couple: WebSocket (§5) with a REST fallback (§4), plus the
 * device's REST calls (§6, §7). Events (CustomEvent, data in `detail`): see our-memories.d.ts. */
export class Client extends EventTarget {
  #o;
  #base;
  #fetch;
  #WS;
  #state = 'idle';
  #ws = null; // the current socket; events of any other one are ignored
  #wsTimer = null; // connect / join deadline
  #hbTimer = null;
  #lastRx = 0;
  #pinged = false;
  #joined = false;
  #joining = false;
  #joinGen = 0; // counts joins, to tell stale signal errors from fresh ones
  #everJoined = false;
  #attempt = 0; // backoff exponent of the WebSocket
  #failures = 0; // consecutive WebSocket attempts that never reached `joined`
  #reconnectTimer = null;
  #rest = false; // REST fallback active (§4)
  #restGen = 0;
  #wake = null;
  #lastSeq;
  #ackedSeq;
  #unacked = 0;
  #ackTimer = null;
  #chain = Promise.resolve(); // signals are processed one at a time, in arrival order
  #recent = new Map(); // `${from}\n${id}` → when processed (§5.4, strict receivers)
  #outbox = new Map(); // id → pending send
  #peers = new Set();
  #ice = null;

  constructor(options) {
    super();
    const { baseUrl, coupleId, deviceId, token } = options ?? {};
    if (!baseUrl || !ID.test(coupleId ?? '') || !ID.test(deviceId ?? '') || !token) {
      throw new TypeError('Client needs baseUrl, coupleId, deviceId and token');
    }
    this.#o = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...options.backoff } };
    this.#base = trim(baseUrl);
    this.#fetch = fetchOf(options.fetch);
    this.#WS = options.WebSocket ?? globalThis.WebSocket;
    this.#lastSeq = options.lastSeq ?? 0;
    this.#ackedSeq = this.#lastSeq;
  }

  get state() { return this.#state; }
  /** The highest seq the app has processed: keep it, and pass it as `lastSeq` next time (§5.4). */
  get lastSeq() { return this.#lastSeq; }
  /** Devices of the couple connected now (WebSocket only: REST has no presence). */
  get peers() { return [...this.#peers]; }
  get transport() { return this.#joined ? 'ws' : this.#rest ? 'rest' : null; }
  get coupleId() { return this.#o.coupleId; }
  get deviceId() { return this.#o.deviceId; }

  /** `fn(detail)` for every `type` event; returns a function that removes it. */
  on(type, fn) {
    const listener = (event) => fn(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /** Starts connecting; follow `state` and `joined` events. */
  connect() {
    if (this.#state !== 'idle') throw new OmError('already_connected', `connect() in state ${this.#state}`);
    if (this.#o.transport === 'rest') this.#startRest();
    else this.#open();
    return this;
  }

  /** Acknowledges what was processed, then closes for good; pending sends reject with `closed`. */
  async close() {
    if (this.#state === 'closed') return;
    this.#flushAck(); // the ack frame goes out before the close frame
    const restAck = this.#rest && this.#lastSeq > this.#ackedSeq;
    this.#shutdown({ code: 1000, reason: 'closed by the app' }, new OmError('closed', 'the client was closed'));
    if (restAck) await this.#poll().catch(() => {}); // §4.2: `after` acknowledges
  }

  /** Sends `payload` (any JSON value) to device `to`, or to every other device when `to` is
   * null (§5.1). Resolves once the server took it (§5.2 `accepted`; §4.1 over REST). */
  send(to, payload, { id = randomId() } = {}) {
    const fail = (code, message) => Promise.reject(new OmError(code, message, { id }));
    if (this.#state === 'closed') return fail('closed', 'the client was closed');
    if (to != null && !ID.test(to)) return fail('invalid_request', '`to`: not a valid deviceId'); // §1
    if (to === this.#o.deviceId) return fail('invalid_recipient', 'a device cannot signal itself'); // §5.3
    if (!ID.test(id) || this.#outbox.has(id)) return fail('invalid_request', '`id`: invalid or in use');
    const text = JSON.stringify(payload);
    if (text === undefined) return fail('invalid_request', 'payload must be a JSON value');
    if (new TextEncoder().encode(text).length > MAX_PAYLOAD_BYTES) {
      return fail('payload_too_large', `payload over ${MAX_PAYLOAD_BYTES} bytes`); // §5.4
    }
    return new Promise((resolve, reject) => {
      const entry = { id, to: to ?? undefined, payload, resolve, reject, gen: -1, tries: 0 };
      // §5.4: past SIGNAL_TTL a resend is no longer recognised as a duplicate, and the signal
      // would have expired anyway: give up rather than risk a second delivery.
      entry.expiry = setTimeout(
        () => this.#settle(entry, new OmError('expired', 'not accepted in time', { id })),
        this.#o.sendTimeoutMs,
      );
      this.#outbox.set(id, entry);
      this.#sendEntry(entry);
    });
  }

  /** §7.3: the `iceServers` for `new RTCPeerConnection({iceServers})`, cached until `ttl`. */
  async getIceServers({ refresh = false } = {}) {
    if (refresh || !this.#ice || Date.now() >= this.#ice.until) {
      const promise = this.#http('/api/ice-servers').then((res) => res.json());
      this.#ice = { promise, until: Infinity };
      promise.then(
        // refresh a tenth early, so TURN credentials do not expire during a call set-up
        ({ ttl }) => { if (this.#ice?.promise === promise) this.#ice.until = Date.now() + (Number(ttl) || 0) * 900; },
        () => { if (this.#ice?.promise === promise) this.#ice = null; },
      );
    }
    return (await this.#ice.promise).iceServers;
  }

  /** §6.1: uploads `data` (the app's ciphertext) as the couple's latest backup. */
  async uploadBackup(data, { meta, sha256 = canHash() } = {}) {
    const body = await toBytes(data);
    const headers = { 'content-type': 'application/octet-stream' };
    if (meta !== undefined) headers['x-backup-meta'] = metaText(meta);
    if (sha256) headers['x-content-sha256'] = await sha256Hex(body); // §6.1: nothing kept on a mismatch
    // §6.1: after a 503, list the backups (listBackups) before uploading again.
    return (await this.#http('/api/backup', { method: 'POST', headers, body })).json();
  }

  /** §6.5: uploads the (already encrypted) bytes with tus 1.0.0, `chunkSize` bytes per `PATCH`
   * (1 MiB). After a failure it asks the server (`HEAD`) how much it kept and goes on from
   * there, with backoff, up to `retries` failures in a row. `onUploadUrl(url)` gets the upload's
   * URL as soon as it exists: keep it and pass it back as `uploadUrl` to resume after an app
   * restart (within `Upload-Expires`, 24 h). Resolves once the backup is published, also when
   * resuming an upload that was (the server remembers it until then). */
  async uploadBackupResumable(data, { meta, chunkSize = 1 << 20, uploadUrl, onUploadUrl, onProgress, retries = 5 } = {}) {
    const body = await toBytes(data);
    const tus = { 'tus-resumable': '1.0.0' };
    const call = (url, init) => http(this.#fetch, url, { ...init, token: this.#o.token });
    let url = uploadUrl;
    if (!url) {
      const b64 = (text) => btoa(String.fromCharCode(...new TextEncoder().encode(text)));
      const metadata = [];
      if (meta !== undefined) metadata.push(`meta ${b64(metaText(meta))}`);
      if (canHash()) metadata.push(`sha256 ${b64(await sha256Hex(body))}`); // checked at the end
      const headers = { ...tus, 'upload-length': String(body.length) };
      if (metadata.length) headers['upload-metadata'] = metadata.join(',');
      const created = await call(`${this.#base}/api/backup/uploads`, { method: 'POST', headers });
      url = new URL(created.headers.get('location'), `${this.#base}/`).href;
      onUploadUrl?.(url);
    }
    let offset = null; // null: ask the server
    for (let failures = 0; ; ) {
      try {
        if (offset === null) {
          // A HEAD answer has no body: name its error by the status, as §6.5 does.
          const head = await call(url, { method: 'HEAD', headers: tus }).catch((e) => {
            const code = { 404: 'upload_not_found', 410: 'upload_expired' }[e.status];
            throw code ? new OmError(code, e.message, { status: e.status }) : e;
          });
          offset = Number(head.headers.get('upload-offset'));
          // Complete already (the answer to the last chunk was lost): published.
          if (offset >= body.length) return { backupId: head.headers.get('x-backup-id'), uploadUrl: url };
        }
        const end = Math.min(offset + chunkSize, body.length);
        const headers = { ...tus, 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' };
        const res = await call(url, { method: 'PATCH', headers, body: body.subarray(offset, end) });
        offset = Number(res.headers.get('upload-offset'));
        failures = 0;
        onProgress?.(offset, body.length);
        if (offset >= body.length) return { backupId: res.headers.get('x-backup-id'), uploadUrl: url };
      } catch (e) {
        // 409: another attempt moved the offset; anything transient: the connection broke.
        if (!(transient(e) || e.code === 'offset_mismatch') || ++failures > retries) throw e;
        offset = null;
        await new Promise((wake) => setTimeout(wake, backoff(failures, this.#o.backoff)));
      }
    }
  }

  /** §6.2: the latest backup, or `backupId`; `null` when `ifNoneMatch` (a sha256) is current. */
  async downloadBackup(backupId, { ifNoneMatch } = {}) {
    const path = `/api/backup/${this.#o.coupleId}${backupId ? `/${backupId}` : ''}`;
    const headers = ifNoneMatch ? { 'if-none-match': `"${ifNoneMatch}"` } : {};
    const res = await this.#http(path, { headers });
    if (res.status === 304) return null;
    const bytes = new Uint8Array(await res.arrayBuffer());
    const length = res.headers.get('content-length');
    // §6.2: storage can fail mid-body: treat a short body as a failure, check the ETag's hash
    if (length !== null && Number(length) !== bytes.length) {
      throw new OmError('short_body', `got ${bytes.length} of ${length} bytes`);
    }
    const sha256 = (res.headers.get('etag') ?? '').replace(/^W\//, '').replace(/"/g, '').toLowerCase();
    if (sha256 && canHash() && (await sha256Hex(bytes)) !== sha256) {
      throw new OmError('checksum_mismatch', 'the downloaded bytes do not match their ETag');
    }
    const meta = res.headers.get('x-backup-meta');
    return {
      bytes,
      backupId: res.headers.get('x-backup-id'),
      sha256,
      createdAt: res.headers.get('x-backup-created-at'),
      meta: meta === null ? undefined : JSON.parse(meta),
    };
  }

  /** §6.3: the couple's backups, newest first. */
  async listBackups() {
    return (await (await this.#http(`/api/backups/${this.#o.coupleId}`)).json()).backups;
  }

  /** §7.1: the couple's devices. */
  async listDevices() {
    return (await (await this.#http('/api/devices')).json()).devices;
  }

  /** §7.2: revokes another device of the couple (its socket is closed with 4003). */
  async revokeDevice(deviceId) {
    await this.#http(`/api/devices/${encodeURIComponent(deviceId)}`, { method: 'DELETE' });
  }

  /** §3.1 with Bearer: opens a pairing for one more device; show `pairingToken` and `coupleId`. */
  async openPairing() {
    return pairInitiate(this.#base, this.#o.deviceId, { token: this.#o.token, fetch: this.#fetch });
  }

  // ---- plumbing ----

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #setState(state, detail = {}) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit('state', { state, ...detail });
  }

  #http(path, init = {}) {
    return http(this.#fetch, `${this.#base}${path}`, { ...init, token: this.#o.token });
  }

  // ---- WebSocket (§5) ----

  #open() {
    this.#reconnectTimer = null;
    if (this.#state === 'closed') return;
    if (!this.#rest) this.#setState(this.#everJoined ? 'reconnecting' : 'connecting');
    const url = this.#o.wsUrl ?? `${this.#base.replace(/^http/, 'ws')}/ws`;
    let ws;
    try {
      ws = new this.#WS(url);
    } catch (e) {
      return this.#lost(ws, 0, String(e?.message ?? e));
    }
    this.#ws = ws;
    this.#joined = this.#joining = false;
    const mine = (fn) => (event) => { if (this.#ws === ws) fn(event); };
    ws.addEventListener('error', () => {}); // a close event follows
    ws.addEventListener('open', mine(() => this.#onOpen(ws)));
    ws.addEventListener('message', mine((event) => this.#onMessage(event.data)));
    ws.addEventListener('close', mine((event) => this.#lost(ws, event.code, event.reason)));
    this.#wsTimer = setTimeout(mine(() => this.#lost(ws, 0, 'connect timeout')), this.#o.connectTimeoutMs);
  }

  #onOpen(ws) {
    this.#lastRx = Date.now();
    this.#pinged = false;
    // §5.5: the server's Ping frames are answered by the browser (or `ws`), but a page cannot
    // see them: watch the server with the JSON `ping` when nothing came for a while.
    const { heartbeatMs, heartbeatTimeoutMs } = this.#o;
    if (heartbeatMs > 0) {
      this.#hbTimer = setInterval(() => {
        const idle = Date.now() - this.#lastRx;
        if (idle >= heartbeatMs + heartbeatTimeoutMs) this.#lost(ws, 0, 'heartbeat timeout');
        else if (idle >= heartbeatMs && !this.#pinged) {
          this.#pinged = true;
          this.#raw({ type: 'ping' });
        }
      }, Math.max(50, Math.min(heartbeatMs, heartbeatTimeoutMs) / 2));
    }
    this.#join();
  }

  #join() {
    this.#joining = true;
    const message = { type: 'join-couple', coupleId: this.#o.coupleId, deviceId: this.#o.deviceId, token: this.#o.token };
    // §5.4: lastSeq acknowledges everything processed, then the backlog follows
    if (this.#lastSeq > 0) message.lastSeq = this.#lastSeq;
    this.#raw(message);
    this.#ackedSeq = Math.max(this.#ackedSeq, this.#lastSeq);
    clearTimeout(this.#wsTimer);
    this.#wsTimer = setTimeout(() => this.#lost(this.#ws, 0, 'join timeout'), this.#o.connectTimeoutMs);
  }

  #raw(message) {
    if (this.#ws?.readyState === OPEN) this.#ws.send(JSON.stringify(message));
  }

  #onMessage(data) {
    this.#lastRx = Date.now(); // §5.5: any frame is a sign of life
    this.#pinged = false;
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      return; // §5: the server sends text JSON only
    }
    switch (m.type) {
      case 'joined':
        return this.#onJoined(m);
      case 'webrtc-signal':
        return this.#enqueue([{ from: m.from, payload: m.payload, seq: m.seq, id: m.id }]);
      case 'accepted': {
        const entry = this.#outbox.get(m.id); // §5.3: correlated by id only
        return entry && this.#settle(entry, null, { id: m.id, transport: 'ws' });
      }
      case 'peer-joined':
        this.#peers.add(m.deviceId);
        return this.#emit('peer-joined', { deviceId: m.deviceId });
      case 'peer-left':
        this.#peers.delete(m.deviceId);
        return this.#emit('peer-left', { deviceId: m.deviceId });
      case 'error':
        return this.#onError(m);
      default: // `pong`, and types of later servers
    }
  }

  #onJoined(m) {
    clearTimeout(this.#wsTimer);
    this.#joined = true;
    this.#joining = false;
    this.#joinGen++;
    this.#everJoined = true;
    this.#attempt = this.#failures = 0;
    this.#peers = new Set(m.peers);
    if (this.#rest) this.#stopRest(); // back from the REST fallback
    this.#setState('joined');
    if (this.#state !== 'joined') return; // a listener closed the client
    // §5.4: recovered=false means signals were evicted unseen: restart the WebRTC negotiation
    this.#emit('joined', { peers: [...m.peers], recovered: m.recovered });
    for (const entry of this.#outbox.values()) this.#sendEntry(entry); // resend, same ids
    if (this.#lastSeq > this.#ackedSeq) this.#flushAck();
  }

  #onError({ code, message, id }) {
    const entry = id === undefined ? undefined : this.#outbox.get(id);
    if (entry) return this.#signalError(entry, code, message);
    if (id !== undefined) return; // about a signal already settled
    if (this.#joining && JOIN_ERRORS.has(code)) {
      // §5.1: a failed join. invalid_token: revoked or re-paired (§7.2); forbidden and
      // invalid_request: the options are wrong; storage_unavailable and unavailable: try
      // again later, on a new socket.
      if (code === 'invalid_token') return this.#revoked(code, message);
      const fatal = code === 'forbidden' || code === 'invalid_request';
      this.#emit('error', { code, message, fatal });
      if (fatal) return this.#shutdown({ code, reason: message }, new OmError(code, message));
      return this.#lost(this.#ws, 0, code);
    }
    if (code === 'unavailable' && this.#joined) return this.#rejoin(); // §5.7
    if (code === 'rate_limited') {
      // §5.1: the message was dropped, maybe an ack: send it again in a while (idempotent)
      this.#ackedSeq = -1;
      this.#ackTimer ??= setTimeout(() => this.#flushAck(), 1000);
    }
    this.#emit('error', { code, message });
  }

  // §5.7: the room failed; this socket is no longer joined. Join again with lastSeq (leave
  // first: a no-op if the server already dropped us, and no `already_joined` if it did not).
  #rejoin() {
    this.#joined = false;
    this.#setState('reconnecting');
    this.#raw({ type: 'leave-couple' });
    this.#join();
  }

  // §5.6 close codes. Called for the current socket only.
  #lost(ws, code, reason) {
    if (ws !== this.#ws && ws !== undefined) return;
    const wasJoined = this.#joined;
    this.#dropSocket();
    if (this.#state === 'closed') return;
    if (code === 4003) return this.#revoked(code, reason); // revoked: never reconnect
    if (code === 4000) {
      // replaced by a newer socket of this device: do not reconnect from this one
      this.#emit('error', { code: 'replaced', message: reason, fatal: true });
      return this.#shutdown({ code, reason }, new OmError('replaced', reason));
    }
    // 1001, 4001, 4002, 4004, network loss: reconnect with backoff, rejoin with lastSeq
    if (!wasJoined) this.#failures++;
    const { transport, fallbackAfter } = this.#o;
    if (transport === 'auto' && !this.#rest && this.#failures >= fallbackAfter) this.#startRest();
    if (!this.#rest) this.#setState('reconnecting', { code, reason });
    this.#reconnectTimer = setTimeout(() => this.#open(), backoff(this.#attempt++, this.#o.backoff));
  }

  #dropSocket() {
    const ws = this.#ws;
    this.#ws = null;
    this.#joined = this.#joining = false;
    this.#peers.clear();
    clearTimeout(this.#wsTimer);
    clearInterval(this.#hbTimer);
    if (ws && ws.readyState <= OPEN) {
      try {
        ws.close(1000);
      } catch {}
    }
  }

  // ---- sending (§5.1, §5.3; §4.1 in the fallback) ----

  #sendEntry(entry) {
    if (entry.retryTimer || entry.restBusy || !this.#outbox.has(entry.id)) return;
    if (this.#joined) {
      if (entry.gen === this.#joinGen) return; // already on this join
      entry.gen = this.#joinGen;
      this.#raw({ type: 'webrtc-signal', id: entry.id, to: entry.to, payload: entry.payload });
    } else if (this.#rest) this.#restSend(entry);
    // otherwise it waits in the outbox for the next join
  }

  #signalError(entry, code, message) {
    if (RETRY_LATER.has(code)) {
      // §5.3: nothing was taken; send again later with the same id (safe, §5.4)
      entry.gen = -1;
      const delay = code === 'rate_limited' ? 1000 + backoff(entry.tries++, this.#o.backoff) : backoff(++entry.tries, this.#o.backoff);
      entry.retryTimer = setTimeout(() => {
        entry.retryTimer = null;
        this.#sendEntry(entry);
      }, delay);
    } else if (REJOIN.has(code)) {
      // §5.3, §5.7: rejoin with lastSeq, then resend with the same id (#onJoined does)
      const stale = entry.gen !== this.#joinGen;
      entry.gen = -1;
      if (this.#joined && stale) this.#sendEntry(entry); // an answer from before our last join
      else if (this.#joined) this.#rejoin();
    } else {
      this.#settle(entry, new OmError(code, message, { id: entry.id }));
    }
  }

  #settle(entry, error, result) {
    if (this.#outbox.get(entry.id) !== entry) return;
    this.#outbox.delete(entry.id);
    clearTimeout(entry.expiry);
    clearTimeout(entry.retryTimer);
    if (error) entry.reject(error);
    else entry.resolve(result);
  }

  // ---- receiving: exactly once, in order (§5.4) ----

  #enqueue(signals) {
    for (const signal of signals) this.#chain = this.#chain.then(() => this.#deliver(signal));
  }

  async #deliver(signal) {
    if (this.#state === 'closed' || !(signal.seq > this.#lastSeq)) return; // a redelivery
    // §5.4: the server's resend memory dies with its room, so a resend can come back under a
    // new seq; strict receivers also drop (sender, id) pairs seen within SIGNAL_TTL.
    const key = `${signal.from}\n${signal.id}`;
    if (!(this.#o.dedupeIds && this.#recent.has(key))) {
      try {
        await this.#o.onSignal?.(signal);
      } catch (error) {
        this.#emit('error', { code: 'handler_failed', message: String(error?.message ?? error), error });
      }
      if (this.#state === 'closed') return;
      this.#emit('signal', signal);
      const now = Date.now();
      this.#recent.set(key, now);
      for (const [k, at] of this.#recent) {
        if (at > now - SIGNAL_TTL_MS && this.#recent.size <= 4096) break;
        this.#recent.delete(k);
      }
    }
    this.#lastSeq = signal.seq;
    // §5.4: ack after processing, cumulatively, batched
    if (++this.#unacked >= this.#o.ackEvery) this.#flushAck();
    else this.#ackTimer ??= setTimeout(() => this.#flushAck(), this.#o.ackDelayMs);
  }

  #flushAck() {
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    this.#unacked = 0;
    if (!this.#joined || this.#lastSeq <= this.#ackedSeq) return;
    // otherwise the next join's lastSeq (§5.4) or poll's `after` (§4.2) carries it
    this.#raw({ type: 'ack', seq: this.#lastSeq });
    this.#ackedSeq = this.#lastSeq;
  }

  // ---- REST fallback (§4): the same mailbox, polled; WebSocket retried in the background ----

  #startRest() {
    if (this.#rest || this.#state === 'closed') return;
    this.#rest = true;
    const gen = ++this.#restGen;
    this.#setState('fallback');
    for (const entry of this.#outbox.values()) this.#sendEntry(entry);
    this.#pollLoop(gen);
  }

  #stopRest() {
    this.#rest = false;
    this.#restGen++;
    this.#wake?.();
  }

  async #poll() {
    const after = this.#lastSeq;
    const query = after > 0 ? `?after=${after}` : '';
    const res = await this.#http(`/api/signals/${this.#o.coupleId}/${this.#o.deviceId}${query}`);
    const { signals } = await res.json();
    this.#ackedSeq = Math.max(this.#ackedSeq, after); // §4.2: `after` acknowledged
    return signals.map((s) => ({ from: s.fromDeviceId, payload: s.signalPayload, seq: s.seq, id: s.id, createdAt: s.createdAt }));
  }

  async #pollLoop(gen) {
    let tries = 0;
    while (this.#rest && gen === this.#restGen) {
      let wait = this.#o.pollIntervalMs;
      try {
        this.#enqueue(await this.#poll()); // oldest first; duplicates of the socket's are dropped
        await this.#chain; // poll again with `after` = what the app has processed
        tries = 0;
      } catch (e) {
        if (e.code === 'invalid_token') return this.#revoked(e.code, e.message); // §7.2
        const fatal = e.code === 'forbidden'; // §2.2: coupleId/deviceId not the token's
        this.#emit('error', { code: e.code, message: e.message, fatal });
        if (fatal) return this.#shutdown({ code: e.code, reason: e.message }, e);
        // anything else (network, 503, 429, a proxy's answer): poll again later
        wait = e.retryAfter ? e.retryAfter * 1000 : backoff(++tries, this.#o.backoff);
      }
      if (!this.#rest || gen !== this.#restGen) break;
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, wait);
        this.#wake = () => (clearTimeout(timer), resolve());
      });
    }
  }

  async #restSend(entry) {
    entry.restBusy = true;
    try {
      // §4.1: REST cannot broadcast; send to each other device, each gets its own id and seq
      const targets = entry.to ? [entry.to] : (await this.listDevices()).map((d) => d.deviceId).filter((d) => d !== this.#o.deviceId);
      entry.deliveries ??= [];
      for (const to of targets) {
        if (entry.deliveries.some((d) => d.to === to) || !this.#outbox.has(entry.id)) continue;
        const json = { coupleId: this.#o.coupleId, fromDeviceId: this.#o.deviceId, toDeviceId: to, signalPayload: entry.payload };
        const { id, seq } = await (await this.#http('/api/signal', { method: 'POST', json })).json();
        entry.deliveries.push({ to, id, seq });
      }
      entry.restBusy = false;
      this.#settle(entry, null, { id: entry.id, transport: 'rest', deliveries: entry.deliveries });
    } catch (e) {
      entry.restBusy = false;
      if (!this.#outbox.has(entry.id)) return; // settled meanwhile (closed, expired)
      if (e.code === 'invalid_token') return this.#revoked(e.code, e.message);
      // §4.1: no client id over REST, so a retry after a timeout or a 503 may deliver twice
      if (!transient(e)) return this.#settle(entry, new OmError(e.code, e.message, { status: e.status, id: entry.id }));
      const delay = e.retryAfter ? e.retryAfter * 1000 : backoff(++entry.tries, this.#o.backoff);
      entry.retryTimer = setTimeout(() => {
        entry.retryTimer = null;
        this.#sendEntry(entry); // over the socket if it is back by then
      }, delay);
    }
  }

  // ---- the end ----

  // §5.6 4003, §7.2: the token is dead; the app should drop its credentials and pair again.
  #revoked(code, message) {
    if (this.#state === 'closed') return;
    this.#emit('revoked', { code, message });
    this.#shutdown({ code, reason: message }, new OmError('device_revoked', message ?? 'device revoked'));
  }

  #shutdown(detail, error) {
    if (this.#state === 'closed') return;
    this.#dropSocket();
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#ackTimer);
    if (this.#rest) this.#stopRest();
    this.#setState('closed', detail);
    for (const entry of [...this.#outbox.values()]) this.#settle(entry, new OmError(error.code, error.message, { id: entry.id }));
  }
}
