// Renders docs/demo.png, the README's picture of the demo page: two browsers (alice, bob)
// paired through the real server, a few messages and a photo over their data channel, side by
// side. Run `npm run screenshot` here after `cargo build` (OM_SERVER_BIN as for the tests).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch, pairedPages, sendFile, sendText } from './browser.mjs';
import { startServer } from './server.mjs';

const out = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../docs/demo.png');
const scratch = mkdtempSync(join(tmpdir(), 'om-screenshot-'));
const server = await startServer({ DEMO: 'on' });
const browser = await launch();
try {
  const { alice, bob, close } = await pairedPages(browser, server);
  for (const page of [alice, bob]) await page.setViewport({ width: 560, height: 900 });
  await sendText(alice, bob, 'Hi! Found the photos from the lake');
  await sendText(bob, alice, 'Send one over');
  // The "photo": a picture of alice's page so far.
  const photo = await alice.screenshot({ type: 'png', clip: { x: 0, y: 0, width: 560, height: 320 } });
  await sendFile(scratch, alice, bob, 'lake.png', photo);
  await sendText(bob, alice, 'Got it, straight from your phone to mine');
  const shots = [await alice.screenshot({ type: 'png' }), await bob.screenshot({ type: 'png' })];
  const page = await browser.newPage();
  await page.setViewport({ width: 1140, height: 900 });
  const imgs = shots.map((s) => `<img src="data:image/png;base64,${Buffer.from(s).toString('base64')}">`).join('');
  await page.setContent(`<body style="margin:0;display:flex;gap:20px;background:#888">${imgs}</body>`);
  writeFileSync(out, await page.screenshot({ type: 'png' }));
  console.log(`wrote ${out} (${readFileSync(out).length} bytes)`);
  await close();
} finally {
  await browser.close();
  await server.stop();
  rmSync(scratch, { recursive: true, force: true });
}
