// Driving the demo page (/demo/) in Debian's headless Chromium with puppeteer-core (pinned in
// package-lock.json; it downloads no browser), for the browser tests and the README screenshot.
//
// Chromium flags for a machine with only a loopback interface: --no-sandbox (tests run as
// root), --allow-loopback-in-peer-connection (else no 127.0.0.1 candidates), and a camera and
// microphone grant for the page's origin (without one Chromium hides host addresses behind mDNS
// names, which nothing resolves here).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { WAIT_MS } from './server.mjs';

/** Debian's chromium, or OM_TEST_CHROMIUM. */
export const CHROMIUM = process.env.OM_TEST_CHROMIUM ?? '/usr/bin/chromium';

/** Starts headless Chromium. */
export function launch() {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--allow-loopback-in-peer-connection', '--disable-dev-shm-usage'],
  });
}

/** A page of its own browser context (its own sessionStorage), at `url`. */
export async function openPage(browser, origin, url) {
  const context = await browser.createBrowserContext();
  await context.overridePermissions(origin, ['camera', 'microphone']);
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(String(e)));
  const response = await page.goto(url);
  return { context, page, response };
}

/** Waits (at most WAIT_MS) until `fn(arg)` is truthy in `page`; returns its value. */
export async function waitIn(page, fn, arg) {
  try {
    const handle = await page.waitForFunction(fn, { timeout: WAIT_MS, polling: 50 }, arg);
    return await handle.jsonValue();
  } catch (e) {
    const state = await page.evaluate(() => {
      const { client, pc, ...rest } = window.demo ?? {};
      return { ...rest, log: document.querySelector('#log')?.innerText, error: document.querySelector('#error')?.innerText };
    });
    throw new Error(`${e.message}\npage: ${JSON.stringify(state)}\nproblems: ${page.problems}`);
  }
}

export const channelOpen = () => window.demo.channel === 'open';

/** Alice starts a pairing in one page, Bob opens its link in another; both join. With
 * `open`, waits until their data channel is open. */
export async function pairedPages(browser, server, { query = '', open = true } = {}) {
  const alice = await openPage(browser, server.base, `${server.base}/demo/${query}`);
  await alice.page.$eval('#device-id', (el) => {
    el.value = 'alice';
  });
  await alice.page.click('#start');
  const link = await waitIn(alice.page, () => document.querySelector('#link').href.includes('#pair='));
  assert.ok(link);
  const href = await alice.page.$eval('#link', (el) => el.href);
  const bob = await openPage(browser, server.base, href);
  assert.equal(await bob.page.$eval('#code-in', (el) => el.value), await alice.page.$eval('#code-out', (el) => el.textContent));
  await bob.page.$eval('#device-id', (el) => {
    el.value = 'bob';
  });
  await bob.page.click('#confirm');
  if (open) {
    await waitIn(alice.page, channelOpen);
    await waitIn(bob.page, channelOpen);
  }
  return { alice: alice.page, bob: bob.page, close: () => Promise.all([alice.context.close(), bob.context.close()]) };
}

export async function sendText(from, to, text) {
  await from.type('#text', text);
  await from.keyboard.press('Enter');
  await waitIn(to, (t) => window.demo.texts.includes(t), text);
}

/** Sends `bytes` as a file (written into the directory `scratch`) through `from`'s file
 * input; `to` must get it whole. */
export async function sendFile(scratch, from, to, name, bytes) {
  const path = join(scratch, name);
  writeFileSync(path, bytes);
  const input = await from.$('#file');
  await input.uploadFile(path);
  await from.click('#send-file');
  const got = await waitIn(to, (n) => window.demo.files.find((f) => f.name === n), name);
  assert.deepEqual(got, { name, size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') });
}
