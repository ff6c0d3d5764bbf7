// Resumable backups with the real tus-js-client (pinned 4.x in package-lock.json), against the
// server binary on each backend (embedded; MongoDB + GridFS; MongoDB + S3, with the services
// .ci/test starts): 24 MiB in 1 MiB chunks, aborted after a few MiB, resumed from the offset the
// server reports (never from 0), completed, then downloaded byte for byte as the latest backup.
import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import * as tus from 'tus-js-client';
import { pair, startServer } from './server.mjs';

const MIB = 1024 * 1024;

/** The server's environment for `backend`, or null (a loud skip, a failure under CI=true). */
async function backendEnv(backend) {
  if (backend === 'embedded') return {};
  const env = process.env;
  const need = backend === 's3'
    ? ['OM_TEST_MONGODB_URI', 'OM_TEST_S3_ENDPOINT', 'OM_TEST_S3_REGION', 'OM_TEST_S3_ACCESS_KEY', 'OM_TEST_S3_SECRET_KEY']
    : ['OM_TEST_MONGODB_URI'];
  const missing = need.filter((v) => !env[v]);
  if (missing.length) {
    if (env.CI === 'true') throw new Error(`${missing.join(', ')} not set (CI): start the services`);
    return null;
  }
  const unique = `om_tus_${Date.now()}_${randomBytes(3).toString('hex')}`;
  const mongo = { MONGODB_URI: env.OM_TEST_MONGODB_URI, MONGODB_DB: unique };
  if (backend === 'mongodb') return mongo;
  const s3 = {
    S3_BUCKET: unique.replace(/_/g, '-'),
    S3_ENDPOINT: env.OM_TEST_S3_ENDPOINT,
    AWS_REGION: env.OM_TEST_S3_REGION,
    AWS_ACCESS_KEY_ID: env.OM_TEST_S3_ACCESS_KEY,
    AWS_SECRET_ACCESS_KEY: env.OM_TEST_S3_SECRET_KEY,
  };
  await createBucket(s3);
  return { ...mongo, ...s3 };
}

/** `PUT /<bucket>` signed with AWS Signature Version 4 (the one S3 call the test makes itself:
 * each test gets a bucket of its own, as the Rust suite's do). */
async function createBucket({ S3_BUCKET, S3_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY }) {
  const url = new URL(`/${S3_BUCKET}`, S3_ENDPOINT);
  const sha = (s) => createHash('sha256').update(s).digest('hex');
  const hmac = (key, s) => createHmac('sha256', key).update(s).digest();
  const stamp = new Date().toISOString().replace(/[-:]|\.\d{3}/g, '');
  const day = stamp.slice(0, 8);
  const empty = sha('');
  const signed = 'host;x-amz-content-sha256;x-amz-date';
  const canonical = ['PUT', url.pathname, '', `host:${url.host}`, `x-amz-content-sha256:${empty}`, `x-amz-date:${stamp}`, '', signed, empty].join('\n');
  const scope = `${day}/${AWS_REGION}/s3/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', stamp, scope, sha(canonical)].join('\n');
  let key = hmac(`AWS4${AWS_SECRET_ACCESS_KEY}`, day);
  for (const part of [AWS_REGION, 's3', 'aws4_request']) key = hmac(key, part);
  const signature = createHmac('sha256', key).update(toSign).digest('hex');
  const res = await fetch(url, {
    method: 'PUT',
    headers: {
      'x-amz-date': stamp,
      'x-amz-content-sha256': empty,
      authorization: `AWS4-HMAC-SHA256 Credential=${AWS_ACCESS_KEY_ID}/${scope}, SignedHeaders=${signed}, Signature=${signature}`,
    },
  });
  if (!res.ok) throw new Error(`create bucket ${S3_BUCKET}: ${res.status} ${await res.text()}`);
}

/** Runs a tus-js-client upload of `data` with `options` until `stop(upload)` resolves it (or it
 * succeeds or fails). */
function run(data, options, stop) {
  return new Promise((ok, fail) => {
    const upload = new tus.Upload(data, {
      chunkSize: MIB,
      retryDelays: [0, 100, 500],
      ...options,
      onChunkComplete: (_size, accepted) => stop?.(upload, accepted, ok),
      onSuccess: () => ok(upload),
      onError: fail,
    });
    upload.start();
  });
}

for (const backend of ['embedded', 'mongodb', 's3']) {
  test(`tus-js-client: 24 MiB in 1 MiB chunks, aborted, resumed from the server's offset, on ${backend}`, async (t) => {
    const env = await backendEnv(backend);
    if (!env) return t.skip(`SKIPPED: ${backend} needs the services .ci/test starts`);
    const server = await startServer(env);
    try {
      const couple = await pair(server.base);
      const headers = { Authorization: `Bearer ${couple.tokens.a}` };
      const data = randomBytes(24 * MIB);
      const sha256 = createHash('sha256').update(data).digest('hex');
      const metadata = { meta: JSON.stringify({ v: 1, backend }), sha256, filename: 'backup.bin' };
      // First attempt: abort once 3 MiB are acknowledged (mid-way through the next chunk).
      const first = await run(data, { endpoint: `${server.base}/api/backup/uploads`, headers, metadata }, (upload, accepted, ok) => {
        if (accepted >= 3 * MIB) upload.abort().then(() => ok(upload));
      });
      assert.match(first.url, /\/api\/backup\/uploads\/[A-Za-z0-9_-]+$/);
      const head = await fetch(first.url, { method: 'HEAD', headers: { ...headers, 'Tus-Resumable': '1.0.0' } });
      assert.equal(head.status, 200);
      const kept = Number(head.headers.get('upload-offset'));
      assert.ok(kept >= 3 * MIB && kept < 24 * MIB, `offset ${kept}`);
      // Resume from the upload's URL: tus-js-client asks the server (HEAD) where to go on.
      const offsets = [];
      await run(data, {
        uploadUrl: first.url,
        headers,
        onBeforeRequest: (req) => {
          if (req.getMethod() === 'PATCH') offsets.push(Number(req.getHeader('Upload-Offset')));
        },
      });
      assert.equal(offsets[0], kept, 'the resume starts at the offset the server kept, not at 0');
      // The couple's latest backup, for the other device, is the whole of it.
      const res = await fetch(`${server.base}/api/backup/${couple.id}`, { headers: { Authorization: `Bearer ${couple.tokens.b}` } });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('etag'), `"${sha256}"`);
      assert.equal(res.headers.get('x-backup-meta'), metadata.meta);
      assert.ok(Buffer.from(await res.arrayBuffer()).equals(data), 'byte for byte');
    } finally {
      await server.stop();
    }
  });
}
