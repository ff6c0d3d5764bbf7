// Types of our-memories.js, the reference client for docs/protocol.md (the § numbers below).

/** JSON a signal payload may hold (§4.1, §5.1): any JSON value, `null` included. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** An error with a protocol `code` (§11), or one of this client's own:
 * `network_error` (fetch failed), `http_<status>` (an answer not in the §1 shape, e.g. a proxy's),
 * `closed` (the client was closed), `replaced` (§5.6 4000), `device_revoked` (§5.6 4003, §7.2),
 * `expired` (a send not accepted within `sendTimeoutMs`), `short_body` / `checksum_mismatch`
 * (a download that failed §6.2's checks), `already_connected`. */
export class OmError extends Error {
  readonly name: 'OmError';
  readonly code: string;
  /** HTTP status, for errors of REST calls. */
  readonly status?: number;
  /** Seconds to wait, from `Retry-After` (§8). */
  readonly retryAfter?: number;
  /** The signal id, for errors of `send()`. */
  readonly id?: string;
}

export interface HttpOptions {
  /** `fetch` to use; defaults to the global one. */
  fetch?: typeof fetch;
}

/** §3.1 answer (201). */
export interface Initiated {
  coupleId: string;
  /** One-time, 43 characters: show it with `coupleId` (as a QR code) to the device to add. */
  pairingToken: string;
  /** This device's credential: store it. With a Bearer `token`, the same token again. */
  deviceToken: string;
  /** RFC 3339; the pairing's end (§3). */
  expiresAt: string;
}

/** §3.1: without `token`, create a couple whose first device is `deviceId`; with the Bearer
 * `token` of a paired device (`deviceId` must be that device), open a pairing for one more. */
export function pairInitiate(
  baseUrl: string,
  deviceId: string,
  options?: HttpOptions & { token?: string },
): Promise<Initiated>;

/** §3.2: join a couple with its pairing token. Resolves with this device's token. */
export function pairConfirm(
  baseUrl: string,
  pairing: { coupleId: string; pairingToken: string; deviceId: string },
  options?: HttpOptions,
): Promise<{ coupleId: string; deviceToken: string }>;

export type Transport = 'auto' | 'ws' | 'rest';

export interface ClientOptions extends HttpOptions {
  /** `https://memories.example` (no trailing `/api`). The WebSocket is `<ws(s)>://…/ws`. */
  baseUrl: string;
  coupleId: string;
  deviceId: string;
  /** The device token from pairing (§2.1). */
  token: string;
  /** WebSocket class; defaults to the global one (Node 20: pass `ws`'s). */
  WebSocket?: new (url: string) => WebSocket;
  /** Overrides the WebSocket URL derived from `baseUrl`. */
  wsUrl?: string;
  /** The `lastSeq` stored from the previous run: signals up to it are never handed over again. */
  lastSeq?: number;
  /** `auto` (default): WebSocket, REST fallback after `fallbackAfter` failed attempts;
   * `ws`: WebSocket only; `rest`: REST only (§4). */
  transport?: Transport;
  /** Consecutive WebSocket attempts that never got `joined` before the REST fallback (3). */
  fallbackAfter?: number;
  /** Reconnect and retry delays: full jitter, random in [0, min(capMs, baseMs × 2^n)). Default
   * 500 ms, 30 s. */
  backoff?: { baseMs?: number; capMs?: number };
  /** REST fallback: time between two polls (1000 ms). Each poll counts against the device's
   * signal budget (§8). */
  pollIntervalMs?: number;
  /** Acks are batched: sent `ackDelayMs` (200) after a signal is processed, or at once every
   * `ackEvery` (16) signals, and before `close()`. */
  ackDelayMs?: number;
  ackEvery?: number;
  /** A JSON `ping` after `heartbeatMs` (20 s) without any frame; the socket is given up
   * `heartbeatTimeoutMs` (10 s) later (§5.5). 0 disables. */
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  /** How long opening the socket, then joining, may take before the attempt counts as failed
   * (10 s each). */
  connectTimeoutMs?: number;
  /** A `send()` not accepted within this rejects with `expired` (default and maximum sensible:
   * SIGNAL_TTL, 5 min, §5.4: a later resend would not be de-duplicated). */
  sendTimeoutMs?: number;
  /** Drop a signal whose (`from`, `id`) was processed in the last 5 min (§5.4, after a room
   * restart the server may deliver a resend again under a new seq). Default true. */
  dedupeIds?: boolean;
  /** Called for each signal, once, in seq order, before the `signal` event; may be async: the
   * signal counts as processed (and is acked) when it settles. If it throws, an `error` event
   * (`handler_failed`) is emitted and the signal still counts as processed. */
  onSignal?: (signal: Signal) => void | Promise<void>;
}

/** A signal from this device's mailbox (§5.2; over REST §4.2 `fromDeviceId`/`signalPayload`
 * are renamed to `from`/`payload`). */
export interface Signal {
  from: string;
  payload: Json;
  /** Strictly increasing per mailbox, not contiguous (§5.4). Exact up to 2^53. */
  seq: number;
  /** The sender's id (WebSocket), or the server's (REST sends, §4.1). */
  id: string;
  /** REST only. */
  createdAt?: string;
}

/** `send()`'s result. `id` is the id this client chose (what WebSocket receivers see). Over
 * REST, `deliveries` has one entry per recipient with the server's id and seq (§4.1). */
export interface SendResult {
  id: string;
  transport: 'ws' | 'rest';
  deliveries?: { to: string; id: string; seq: number }[];
}

export type State = 'idle' | 'connecting' | 'joined' | 'reconnecting' | 'fallback' | 'closed';

export interface ClientEvents {
  /** Every change; `code`/`reason`: the close code (§5.6) or error code that caused it. */
  state: { state: State; code?: number | string; reason?: string };
  /** Joined over the WebSocket (first time and every rejoin). On `recovered: false`, signals
   * were evicted before this device processed them: restart the WebRTC negotiation (§5.4). */
  joined: { peers: string[]; recovered: boolean };
  /** Once per signal, in seq order, exactly once for this Client (across reconnects, rejoins
   * and transports). After the listeners return it counts as processed: persist
   * `client.lastSeq` to resume across app restarts. */
  signal: Signal;
  'peer-joined': { deviceId: string };
  'peer-left': { deviceId: string };
  /** 4003, or `invalid_token` on join or over REST: the token is dead (revoked or re-paired,
   * §7.2). The client is closed; drop the credentials and pair again. */
  revoked: { code: number | string; message?: string };
  /** Errors not tied to a `send()` (those reject its promise). `fatal`: the client closed. */
  error: { code: string; message?: string; fatal?: boolean; error?: unknown };
}

export interface BackupRecord {
  backupId: string;
  size: number;
  sha256: string;
  createdAt: string;
  uploadedBy: string;
  meta?: Json;
}

export interface DownloadedBackup {
  bytes: Uint8Array;
  backupId: string;
  /** From the ETag; checked against the bytes when WebCrypto is available (§6.2). */
  sha256: string;
  createdAt: string;
  meta?: Json;
}

export class Client extends EventTarget {
  constructor(options: ClientOptions);
  readonly state: State;
  /** The highest seq processed by the app: persist it, pass it back as `lastSeq` (§5.4). */
  readonly lastSeq: number;
  /** Devices connected now, per the WebSocket's presence (§5.6); empty over REST. */
  readonly peers: string[];
  /** What carries signals now. */
  readonly transport: 'ws' | 'rest' | null;
  readonly coupleId: string;
  readonly deviceId: string;

  /** Listener for `type` that gets the event's `detail`; returns a remover. */
  on<K extends keyof ClientEvents>(type: K, listener: (detail: ClientEvents[K]) => void): () => void;
  addEventListener<K extends keyof ClientEvents>(
    type: K,
    listener: (event: CustomEvent<ClientEvents[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;

  /** Starts connecting (once per Client). Reconnects by itself with backoff until `close()`,
   * 4000 (replaced) or 4003 (revoked). */
  connect(): this;
  /** Acknowledges what was processed, closes, rejects pending sends with `closed`. Final. */
  close(): Promise<void>;

  /** Sends `payload` to `to`, or to every other device of the couple when `to` is null.
   * At least once; exactly once over the WebSocket (the id is resent until `accepted`, §5.4).
   * Rejects with the §5.3 code for final errors (`payload_too_large`, `unknown_device`,
   * `invalid_recipient`, …); `mailbox_full`, `rate_limited`, `storage_unavailable` and
   * `unavailable` are retried. `id` (1–64 of [A-Za-z0-9_-]) defaults to a random one. */
  send(to: string | null, payload: Json, options?: { id?: string }): Promise<SendResult>;

  /** §7.3: for `new RTCPeerConnection({ iceServers })`; cached for 90% of `ttl`. */
  getIceServers(options?: { refresh?: boolean }): Promise<RTCIceServer[]>;

  /** §6.1: upload the (already encrypted) bytes as the couple's latest backup. `meta`: any
   * JSON, ≤ 4 KiB, stored in clear. `sha256` (default: when WebCrypto is available) sends
   * `X-Content-SHA256`. After a 503, `listBackups()` before uploading again. */
  uploadBackup(
    data: Uint8Array | ArrayBuffer | ArrayBufferView | Blob,
    options?: { meta?: Json; sha256?: boolean },
  ): Promise<BackupRecord>;
  /** §6.5: upload with tus 1.0.0, `chunkSize` bytes (1 MiB) per `PATCH`; after a failure, go on
   * from the offset the server reports (`HEAD`), with backoff, up to `retries` (5) failures in a
   * row. Keep the URL given to `onUploadUrl` and pass it as `uploadUrl` to resume after a
   * restart (within 24 h): an upload that was published meanwhile resolves at once with its
   * backup. The whole backup's SHA-256 is declared when WebCrypto is available. */
  uploadBackupResumable(
    data: Uint8Array | ArrayBuffer | ArrayBufferView | Blob,
    options?: {
      meta?: Json;
      chunkSize?: number;
      uploadUrl?: string;
      onUploadUrl?: (url: string) => void;
      onProgress?: (offset: number, length: number) => void;
      retries?: number;
    },
  ): Promise<{ backupId: string | null; uploadUrl: string }>;
  /** §6.2: the latest backup, or the one named; `null` when `ifNoneMatch` (the sha256 held) is
   * still current (304). Throws `short_body` / `checksum_mismatch` on a damaged download. */
  downloadBackup(backupId?: string, options?: { ifNoneMatch?: string }): Promise<DownloadedBackup | null>;
  /** §6.3: newest first. */
  listBackups(): Promise<BackupRecord[]>;

  /** §7.1 */
  listDevices(): Promise<{ deviceId: string; pairedAt: string }[]>;
  /** §7.2: revoke another device (never this one: `cannot_revoke_self`). */
  revokeDevice(deviceId: string): Promise<void>;
  /** §3.1 with this device's token: a pairing for one more device. */
  openPairing(): Promise<Initiated>;
}

/** Minimal shape of `RTCIceServer` (lib.dom has the full one). */
export interface RTCIceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}
