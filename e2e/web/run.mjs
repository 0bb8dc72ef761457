// Browser tests of the web app against a running stack (gateway + pipeline + MailDev).
//
//   node e2e/web/run.mjs
//
// Environment: WEB_MODULES (node_modules holding playwright-core and axe-core), BASE_URL,
// GATEWAYS (comma-separated base URLs of the replicas behind BASE_URL), MAILDEV_URL, CHROMIUM, FIXTURE_A, FIXTURE_B, FIXTURE_NOT_MEDIA, FIXTURE_LARGE, SCREENSHOTS;
// optional ADMIN_EMAIL + ADMIN_PASSWORD (adds the admin page checks and screenshots).
//
// Prints one line per scenario passed to stderr; exits 1 with the reason at the first failure.
// Waits are deadlines on conditions (waitForFunction, locator.waitFor, HTTP polls), never
// fixed sleeps.

import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

// ---- set-up --------------------------------------------------------------------------------

function env(name, { optional = false } = {}) {
  const value = process.env[name];
  if (!value && !optional) throw new Error(`environment variable ${name} is not set`);
  return value || '';
}

const MODULES = path.resolve(env('WEB_MODULES'));
const BASE = env('BASE_URL').replace(/\/+$/, '');
const MAILDEV = env('MAILDEV_URL').replace(/\/+$/, '');
// Each replica behind BASE_URL, whose metrics are its own.
const GATEWAYS = env('GATEWAYS').split(',').map((url) => url.replace(/\/+$/, ''));
const CHROMIUM = env('CHROMIUM');
const FIXTURE_A = path.resolve(env('FIXTURE_A'));
const FIXTURE_B = path.resolve(env('FIXTURE_B'));
const FIXTURE_NOT_MEDIA = path.resolve(env('FIXTURE_NOT_MEDIA'));
const FIXTURE_LARGE = path.resolve(env('FIXTURE_LARGE'));
const SHOTS = path.resolve(env('SCREENSHOTS'));
const ADMIN_EMAIL = env('ADMIN_EMAIL', { optional: true });
const ADMIN_PASSWORD = env('ADMIN_PASSWORD', { optional: true });

// ESM ignores NODE_PATH: resolve both packages from WEB_MODULES explicitly.
const requireFromModules = createRequire(path.join(MODULES, 'noop.cjs'));
const { chromium } = requireFromModules(path.join(MODULES, 'playwright-core'));
const AXE_SOURCE = fs.readFileSync(path.join(MODULES, 'axe-core', 'axe.min.js'), 'utf8');

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const RUN = randomBytes(3).toString('hex');
// Distinctive words, so fuzzy search cannot match something else by accident.
const TITLE_A = `Moonlight Serenade Quixotic ${RUN}`;
const TITLE_A_TYPO = 'Quixotik'; // one letter off "Quixotic"
const TITLE_B = `Harbor Lanterns Wistful ${RUN}`;
const NAME_A = path.basename(FIXTURE_A);
const NAME_B = path.basename(FIXTURE_B);
const NAME_NOT_MEDIA = path.basename(FIXTURE_NOT_MEDIA);
const NAME_LARGE = path.basename(FIXTURE_LARGE);

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

function passed(what) {
  process.stderr.write(`ok - ${what}\n`);
}

function log(what) {
  process.stderr.write(`  .. ${what}\n`);
}

/** Runs `step`, turning a Playwright timeout into `message` (with the original cause). */
async function within(message, step) {
  try {
    return await step();
  } catch (err) {
    if (err instanceof Failure) throw err;
    fail(`${message}: ${err.message.split('\n')[0]}`);
  }
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Calls `probe` until it returns something truthy or the deadline passes (HTTP polling). */
async function poll(what, probe, { timeout, interval = 1000 }) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) fail(`${what} (gave up after ${timeout / 1000} s${last ? `; last error: ${last.message}` : ''})`);
    await delay(interval);
  }
}

function attr(s) {
  return JSON.stringify(s); // a CSS attribute value in double quotes
}

const mp3Name = (name) => `${name.replace(/\.[^./\\]*$/, '') || 'track'}.mp3`;

// ---- browser contexts with console, error and CSP watching ---------------------------------

let browser;
const contexts = [];

/** A normal context: any console error, page error or CSP violation fails the run. */
async function newContext(label, options = {}) {
  const context = await browser.newContext({ viewport: DESKTOP, acceptDownloads: true, ...options });
  context.problems = [];
  context.label = label;
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  context.on('page', (page) => watch(context, page));
  contexts.push(context);
  return context;
}

// Chromium reports every HTTP error status as a console error ("Failed to load resource").
// The refusals this run provokes on purpose are listed, each by status and path; any other
// is a failure.
const MISSING_PAGE = '/no-such-page';
const PROVOKED = [
  [401, /^\/v1\/me$/, 'the signed-out start-up check'],
  [401, /^\/v1\/session$/, 'the wrong password'],
  [409, /^\/v1\/auth\/register$/, 'the taken address'],
  [415, /^\/v1\/tus\/[^/]+$/, 'the file that is not media'],
  // A resumed PATCH while the paused one still holds the upload: tus-js-client asks again.
  [423, /^\/v1\/tus\/[^/]+$/, 'the upload still held by the paused request'],
  [409, /^\/v1\/tus\/[^/]+$/, 'an offset the client had not caught up with'],
  [404, /^\/v1\/jobs\/[^/]+$/, 'the deleted job'],
  [400, /^\/v1\/downloads\/[^/]+$/, 'the altered link'],
  [403, /^\/v1\/downloads\/[^/]+$/, 'the altered link'],
  [404, new RegExp(`^${MISSING_PAGE}$`), 'the page that does not exist'],
];
function expectedConsoleError(msg) {
  const status = /^Failed to load resource: the server responded with a status of (\d{3})/.exec(msg.text())?.[1];
  if (!status) return false;
  try {
    const path = new URL(msg.location().url).pathname;
    return PROVOKED.some(([s, p]) => s === Number(status) && p.test(path));
  } catch {
    return false;
  }
}

function watch(context, page) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error' || expectedConsoleError(msg)) return;
    context.problems.push(`console error on ${page.url()}: ${msg.text()} (${msg.location().url})`);
  });
  page.on('pageerror', (err) => context.problems.push(`page error on ${page.url()}: ${err.message}`));
}

/** No console errors, page errors or CSP violations so far on this page. */
async function assertClean(page, where) {
  const context = page.context();
  const violations = await page.evaluate(() => window.__cspViolations || []);
  if (violations.length) fail(`CSP violations on ${where}: ${violations.join('; ')}`);
  if (context.problems.length) fail(`errors on ${where}:\n  ${context.problems.join('\n  ')}`);
}

// ---- accessibility, screenshots, phone width --------------------------------------------------

const axeDone = [];

async function axe(page, where) {
  let results;
  try {
    // page.evaluate runs through DevTools, which CSP does not govern, so axe can be injected
    // into the real page (addScriptTag would be blocked by script-src 'self').
    // A string is evaluated as a script by DevTools itself (no eval() in the page).
    if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE_SOURCE);
    results = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  } catch (err) {
    log(`axe could not run in the page (${err.message.split('\n')[0]}); scanning in a CSP-bypassing context`);
    results = await axeBypassingCsp(page);
  }
  const bad = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    const text = bad
      .map((v) => `${v.impact} ${v.id}: ${v.help}\n${v.nodes.map((n) => `      ${n.target.join(' ')} — ${n.failureSummary?.split('\n').join(' ')}`).join('\n')}`)
      .join('\n    ');
    fail(`accessibility violations on ${where}:\n    ${text}`);
  }
  axeDone.push(where);
}

/** Only for axe: the same URL and cookies in a context that ignores CSP. */
async function axeBypassingCsp(page) {
  const state = await page.context().storageState();
  const context = await browser.newContext({ viewport: DESKTOP, bypassCSP: true, storageState: state });
  try {
    const other = await context.newPage();
    await other.goto(page.url());
    await other.locator('main h1').first().waitFor({ timeout: 15000 });
    await other.addScriptTag({ content: AXE_SOURCE });
    return await other.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  } finally {
    await context.close();
  }
}

const phoneChecked = [];

/** Desktop and phone screenshots; at phone width nothing may scroll sideways. */
async function screens(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: path.join(SHOTS, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(PHONE);
  await page.waitForFunction((w) => window.innerWidth === w, PHONE.width, { timeout: 5000 });
  const widths = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }));
  if (widths.scroll > widths.inner) fail(`${name} scrolls sideways at phone width: scrollWidth ${widths.scroll} > ${widths.inner}`);
  phoneChecked.push(name);
  await page.screenshot({ path: path.join(SHOTS, `${name}-phone.png`), fullPage: true });
  await page.setViewportSize(DESKTOP);
}

/** Every check a page gets once it shows what it should. */
async function checkPage(page, name, { shots = true } = {}) {
  await assertClean(page, name);
  await axe(page, name);
  if (shots) await screens(page, name);
  await assertClean(page, name);
}

async function heading(page, text, timeout = 15000) {
  await within(`page ${page.url()} never showed the heading "${text}"`, () =>
    page.locator('main h1', { hasText: text }).first().waitFor({ timeout }),
  );
}

// ---- API helpers (through the page's cookies) ---------------------------------------------------

async function apiJson(page, url) {
  const res = await page.request.get(`${BASE}${url}`);
  if (!res.ok()) fail(`GET ${url} answered ${res.status()}: ${await res.text()}`);
  return res.json();
}

async function apiBytes(page, url) {
  const res = await page.request.get(`${BASE}${url}`);
  if (!res.ok()) fail(`GET ${url} answered ${res.status()}`);
  return Buffer.from(await res.body());
}

/** The sum of a counter over every gateway replica (each counts what it received). */
async function metric(name) {
  let total = 0;
  for (const replica of GATEWAYS) {
    const res = await fetch(`${replica}/metrics`);
    if (!res.ok) fail(`GET ${replica}/metrics answered ${res.status}`);
    const text = await res.text();
    let found = false;
    for (const line of text.split('\n')) {
      if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) {
        total += Number(line.slice(line.lastIndexOf(' ') + 1));
        found = true;
      }
    }
    if (!found) fail(`metric ${name} is not in ${replica}/metrics`);
  }
  return total;
}

// ---- UI helpers ----------------------------------------------------------------------------------

async function signIn(page, email, password) {
  await page.goto(`${BASE}/sign-in`);
  await heading(page, 'Sign in');
  await page.locator('#sign-in-email').fill(email);
  await page.locator('#sign-in-password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await heading(page, 'Your music');
}

/** Signs in with the keyboard alone: Tab to each field from the top of the page, Enter. */
async function signInByKeyboard(page, email, password) {
  await page.goto(`${BASE}/sign-in`);
  await heading(page, 'Sign in');
  await page.evaluate(() => document.activeElement?.blur());
  const focusedId = () => page.evaluate(() => document.activeElement?.id ?? '');
  for (let presses = 0; (await focusedId()) !== 'sign-in-email'; presses++) {
    if (presses === 20) fail('Tab never reached the email field of the sign-in page');
    await page.keyboard.press('Tab');
  }
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  if ((await focusedId()) !== 'sign-in-password') fail('Tab from the email field does not reach the password field');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  await heading(page, 'Your music');
}

const uploadRow = (page, name) => page.locator(`li.upload[data-file-name=${attr(name)}]`);
const jobRow = (page, id) => page.locator(`li.job[data-job-id=${attr(id)}]`);
const hitRow = (page, id) => page.locator(`li.hit[data-job-id=${attr(id)}]`);

/** Waits for an upload row to finish; returns its job id. */
async function uploadDone(page, name, timeout) {
  const row = uploadRow(page, name);
  await within(`upload of ${name} did not finish within ${timeout / 1000} s`, () =>
    page.waitForFunction(
      (sel) => {
        const el = document.querySelector(sel);
        return el && (el.dataset.status === 'done' || el.dataset.status === 'failed') && el.dataset.status;
      },
      `li.upload[data-file-name=${attr(name)}]`,
      { timeout },
    ),
  );
  const status = await row.getAttribute('data-status');
  if (status !== 'done') fail(`upload of ${name} failed: ${await row.locator('.upload-message').textContent()}`);
  const jobId = await within(`upload of ${name} finished without a Tunewire-Job-Id`, async () => {
    await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.jobId, `li.upload[data-file-name=${attr(name)}]`, { timeout: 5000 });
    return row.getAttribute('data-job-id');
  });
  return jobId;
}

/** Waits (without reloading) until the live list shows the job converted. */
async function converted(page, jobId, name, timeout) {
  const state = await within(`job ${jobId} (${name}) never reached "converted" in the live list within ${timeout / 1000} s`, async () => {
    const handle = await page.waitForFunction(
      (sel) => {
        const s = document.querySelector(sel)?.dataset.state;
        return (s === 'converted' || s === 'failed' || s === 'expired') && s;
      },
      `li.job[data-job-id=${attr(jobId)}]`,
      { timeout },
    );
    return handle.jsonValue();
  });
  if (state !== 'converted') {
    const error = await jobRow(page, jobId).locator('.job-error').textContent().catch(() => '');
    fail(`job ${jobId} (${name}) ended ${state}: ${error}`);
  }
}

/** Plays the audio element under `scope` and waits for it to advance past 0.5 s. */
async function playsAudio(scope, what) {
  const audio = scope.locator('audio').first();
  await within(`${what}: no audio player appeared`, () => audio.waitFor({ timeout: 10000 }));
  await audio.evaluate((a) => a.play().catch(() => {}));
  await within(`${what}: audio did not play (currentTime stayed ≤ 0.5 s)`, () =>
    audio.evaluate(
      (a) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`currentTime ${a.currentTime}, error ${a.error?.message ?? 'none'}`)), 20000);
          const check = () => {
            if (a.currentTime > 0.5) {
              clearTimeout(timer);
              resolve();
            } else requestAnimationFrame(check);
          };
          check();
        }),
    ),
  );
  return audio;
}

async function download(page, link, what) {
  const [dl] = await within(`${what}: no download started`, () =>
    Promise.all([page.waitForEvent('download', { timeout: 30000 }), link.click()]),
  );
  const file = await dl.path();
  if (!file) fail(`${what}: download failed: ${await dl.failure()}`);
  return { bytes: fs.readFileSync(file), name: dl.suggestedFilename() };
}

/**
 * Fills the search form until a condition on the hits holds: the index catches up
 * asynchronously, and the page only asks again when the input changes.
 */
async function searchUntil(page, fields, condition, what, timeout) {
  const deadline = Date.now() + timeout;
  for (let attempt = 0; ; attempt++) {
    for (const [name, value] of Object.entries({ q: '', tag: '', artist: '', ...fields })) {
      await page.locator(`#search-${name}`).fill(attempt % 2 ? `${value} ` : value);
    }
    // The debounced request and its answer: wait for the result count to come back.
    const ok = await page
      .waitForFunction(condition.fn, condition.arg, { timeout: 4000 })
      .then(() => true, () => false);
    if (ok) return;
    if (Date.now() > deadline) {
      const shown = await page.locator('li.hit').evaluateAll((els) => els.map((e) => `${e.dataset.jobId}: ${e.querySelector('h3')?.textContent}`));
      const status = await page.locator('main [role=status]').first().textContent();
      fail(`${what} (after ${timeout / 1000} s; status "${status?.trim()}", hits: ${shown.join(', ') || 'none'})`);
    }
  }
}

const hitShown = (id) => ({ fn: (sel) => !!document.querySelector(sel), arg: `li.hit[data-job-id=${attr(id)}]` });
const hitGone = (id) => ({
  fn: (sel) => /result/.test(document.querySelector('main [role=status]')?.textContent || '') && !document.querySelector(sel),
  arg: `li.hit[data-job-id=${attr(id)}]`,
});

// ---- scenarios ---------------------------------------------------------------------------------

const user = { email: `web-${Date.now()}-${RUN}@example.test`, password: `Web-e2e-${RUN}-long-enough` };
const found = {}; // what later scenarios need: job ids, file ids, bytes

async function pagesSignedOut() {
  const context = await newContext('signed out');
  const page = await context.newPage();

  const res = await page.goto(`${BASE}/`);
  const headers = res.headers();
  const csp = headers['content-security-policy'];
  if (!csp) fail('GET / has no content-security-policy header');
  if (csp.includes('unsafe-inline')) fail(`GET / CSP allows 'unsafe-inline': ${csp}`);
  if ((headers['x-content-type-options'] || '').toLowerCase() !== 'nosniff') fail('GET / lacks x-content-type-options: nosniff');
  await heading(page, 'Sign in'); // signed out: / sends to the sign-in page
  await checkPage(page, 'sign-in');

  await page.getByRole('link', { name: 'Create an account' }).click();
  await heading(page, 'Create an account');
  await checkPage(page, 'sign-up');

  await page.goto(`${BASE}${MISSING_PAGE}`);
  await heading(page, 'Page not found');
  await checkPage(page, 'not-found', { shots: false });
  await context.close();
}

async function scenarioUploads() {
  const context = await newContext('user');
  const page = await context.newPage();

  // Sign up: it signs in too.
  await page.goto(`${BASE}/sign-up`);
  await heading(page, 'Create an account');
  await page.locator('#sign-up-email').fill(user.email);
  await page.locator('#sign-up-password').fill(user.password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await heading(page, 'Your music', 20000);
  const email = await page.locator('header .email').textContent();
  if (email?.trim() !== user.email) fail(`after sign-up the header shows "${email}", not ${user.email}`);

  // Signed out: a wrong password and a taken address are refused in words.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await heading(page, 'Sign in');
  await page.locator('#sign-in-email').fill(user.email);
  await page.locator('#sign-in-password').fill(`${user.password}-wrong`);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await within('a wrong password showed no error', () =>
    page.waitForFunction(() => document.querySelector('#sign-in-status')?.textContent.trim(), null, { timeout: 10000 }),
  );
  log(`wrong password: "${(await page.locator('#sign-in-status').textContent()).trim()}"`);
  await page.goto(`${BASE}/sign-up`);
  await heading(page, 'Create an account');
  await page.locator('#sign-up-email').fill(user.email);
  await page.locator('#sign-up-password').fill(user.password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await within('registering a taken address showed no error', () =>
    page.waitForFunction(() => document.querySelector('#sign-up-status')?.textContent.trim(), null, { timeout: 10000 }),
  );
  const taken = (await page.locator('#sign-up-status').textContent()).trim();
  if (!/taken|already|exists|in use|registered/i.test(taken)) fail(`registering a taken address said "${taken}"`);
  log(`taken address: "${taken}"`);

  await signIn(page, user.email, user.password);
  await within('the job list never went live (EventSource open)', () => page.locator('.live-live').waitFor({ timeout: 20000 }));

  // Three files at once; titles before the upload starts.
  await page.locator('#file-input').setInputFiles([FIXTURE_A, FIXTURE_B, FIXTURE_NOT_MEDIA]);
  for (const name of [NAME_A, NAME_B, NAME_NOT_MEDIA]) {
    await within(`no upload row for ${name}`, () => uploadRow(page, name).waitFor({ timeout: 5000 }));
  }
  await uploadRow(page, NAME_A).locator('input[name="title"]').fill(TITLE_A);
  await uploadRow(page, NAME_A).locator('input[name="artist"]').fill('The Fixture Quartet');
  await uploadRow(page, NAME_B).locator('input[name="title"]').fill(TITLE_B);
  await page.getByRole('button', { name: /^Upload all/ }).click();

  // The file that is not media: the server's refusal, in its words.
  const refusal = uploadRow(page, NAME_NOT_MEDIA);
  await within(`${NAME_NOT_MEDIA} was not refused`, () =>
    page.waitForFunction((sel) => document.querySelector(sel)?.dataset.status === 'failed', `li.upload[data-file-name=${attr(NAME_NOT_MEDIA)}]`, { timeout: 60000 }),
  );
  const refusalText = (await refusal.locator('.upload-message').textContent()).trim();
  if (!refusalText || /connection was lost|HTTP \d+/.test(refusalText)) fail(`${NAME_NOT_MEDIA}: expected the server's message, got "${refusalText}"`);
  log(`not media: "${refusalText}"`);

  const jobA = await uploadDone(page, NAME_A, 120000);
  const jobB = await uploadDone(page, NAME_B, 120000);
  await converted(page, jobA, NAME_A, 180000);
  await converted(page, jobB, NAME_B, 180000);
  const fileA = (await apiJson(page, `/v1/jobs/${jobA}`)).output.file_id;
  const fileB = (await apiJson(page, `/v1/jobs/${jobB}`)).output.file_id;
  Object.assign(found, { jobA, jobB, fileA });

  // Play A, then seek past what the player has buffered: it must ask for the rest with a
  // Range request starting inside the file (A is long enough that the first answer does not
  // bring it all).
  const ranges = [];
  page.on('request', (req) => {
    if (req.url().includes('/v1/files/')) ranges.push(req.allHeaders().then((h) => h.range ?? null, () => req.headers().range ?? null));
  });
  const rowA = jobRow(page, jobA);
  await rowA.getByRole('button', { name: `Play ${NAME_A}` }).click();
  const audio = await playsAudio(rowA, `playing ${NAME_A}`);
  const buffered = await audio.evaluate((a) => (a.buffered.length ? a.buffered.end(a.buffered.length - 1) : 0));
  ranges.length = 0;
  const end = await audio.evaluate((a) => a.duration - 5);
  if (!(buffered < end)) fail(`the player had buffered ${NAME_A} to ${buffered} s, past the seek target ${end} s: the seek would prove nothing`);
  const target = await within(`seeking in ${NAME_A} did not work`, () =>
    audio.evaluate(
      (a) =>
        new Promise((resolve, reject) => {
          const target = a.duration - 5;
          const timer = setTimeout(() => reject(new Error(`currentTime ${a.currentTime}, target ${target}`)), 15000);
          a.addEventListener('seeked', () => {
            clearTimeout(timer);
            resolve(target);
          }, { once: true });
          a.currentTime = target;
        }),
    ),
  );
  const inside = await poll(`seeking to ${target.toFixed(0)} s (buffered to ${buffered.toFixed(0)} s) issued no Range request into the file`, async () => {
    const sent = await Promise.all(ranges);
    return sent.find((r) => /^bytes=[1-9]\d*-/.test(r ?? '')) ?? null;
  }, { timeout: 15000 });
  log(`seek to ${target.toFixed(0)} s of ${NAME_A} (buffered to ${buffered.toFixed(0)} s): ${inside}`);
  await audio.evaluate((a) => a.pause());

  // Download B: the same bytes as the API serves.
  const got = await download(page, jobRow(page, jobB).getByRole('link', { name: `Download ${NAME_B}` }), `downloading ${NAME_B}`);
  const expected = await apiBytes(page, `/v1/files/${fileB}`);
  if (!got.bytes.equals(expected)) fail(`downloaded ${NAME_B}: ${got.bytes.length} bytes differ from GET /v1/files/${fileB} (${expected.length} bytes)`);
  if (got.name !== mp3Name(NAME_B)) fail(`download of ${NAME_B} is named ${got.name} (expected ${mp3Name(NAME_B)})`);

  await checkPage(page, 'jobs');

  // Search: a typo in the title, then a tag.
  const tags = await poll(`job ${jobA} got no tags from the catalogue`, async () => {
    const job = await apiJson(page, `/v1/jobs/${jobA}`);
    return job.tags?.length ? job.tags : null;
  }, { timeout: 60000 });
  await page.getByRole('navigation').getByRole('link', { name: 'Search' }).click();
  await heading(page, 'Search');
  await searchUntil(page, { q: TITLE_A_TYPO }, hitShown(jobA), `searching "${TITLE_A_TYPO}" did not find ${NAME_A}`, 60000);
  await checkPage(page, 'search');
  await searchUntil(page, { tag: tags[0] }, hitShown(jobA), `searching tag "${tags[0]}" did not find ${NAME_A}`, 30000);
  await searchUntil(page, { q: TITLE_B }, hitShown(jobB), `searching "${TITLE_B}" did not find ${NAME_B}`, 60000);

  // Delete B (confirmed): gone from the list, then from search.
  await page.getByRole('navigation').getByRole('link', { name: 'Jobs' }).click();
  await heading(page, 'Your music');
  await page.getByRole('button', { name: `Delete ${NAME_B}` }).click();
  const dialog = page.locator('dialog[open]');
  await within('no confirmation dialog appeared', () => dialog.waitFor({ timeout: 5000 }));
  await dialog.getByRole('button', { name: 'Delete', exact: true }).click();
  await within(`${NAME_B} stayed in the list after deleting`, () => jobRow(page, jobB).waitFor({ state: 'detached', timeout: 15000 }));
  await page.getByRole('navigation').getByRole('link', { name: 'Search' }).click();
  await heading(page, 'Search');
  await searchUntil(page, { q: TITLE_B }, hitGone(jobB), `search still finds deleted ${NAME_B}`, 30000);
  await assertClean(page, 'search after delete');

  found.context = context;
  found.page = page;
  passed(`1 sign-up, uploads (${NAME_A}, ${NAME_B} converted live; ${NAME_NOT_MEDIA} refused), play with Range, download, fuzzy and tag search, delete`);
}

async function scenarioResume() {
  const page = await found.context.newPage();
  await page.goto(`${BASE}/`);
  await heading(page, 'Your music');
  await within('the job list never went live', () => page.locator('.live-live').waitFor({ timeout: 20000 }));
  const size = fs.statSync(FIXTURE_LARGE).size;
  const before = await metric('upload_bytes_total');

  await page.locator('#file-input').setInputFiles(FIXTURE_LARGE);
  await page.getByRole('button', { name: /^Upload all/ }).click();
  const progressSel = `li.upload[data-file-name=${attr(NAME_LARGE)}] progress`;
  await within(`${NAME_LARGE} never reached half way`, () =>
    page.waitForFunction((sel) => {
      const p = document.querySelector(sel);
      return p && p.max > 0 && p.value / p.max >= 0.5;
    }, progressSel, { timeout: 120000, polling: 'raf' }),
  );
  await page.getByRole('button', { name: `Pause ${NAME_LARGE}` }).click();
  const pausedAt = await page.locator(progressSel).evaluate((p) => p.value / p.max);
  if (pausedAt >= 1) fail(`${NAME_LARGE} finished before it could be paused`);
  log(`paused at ${(pausedAt * 100).toFixed(1)} %`);

  await page.reload();
  await heading(page, 'Your music');
  await within(`after reload, the unfinished upload of ${NAME_LARGE} is not offered`, () =>
    page.locator(`li.remembered-item[data-file-name=${attr(NAME_LARGE)}]`).waitFor({ timeout: 10000 }),
  );
  await page.locator('#file-input').setInputFiles(FIXTURE_LARGE);
  await page.getByRole('button', { name: /^Upload all/ }).click();
  const resumedAt = await within(`${NAME_LARGE} made no progress after resuming`, async () => {
    const handle = await page.waitForFunction((sel) => {
      const p = document.querySelector(sel);
      return p && p.value > 0 && p.value / p.max;
    }, progressSel, { timeout: 60000, polling: 'raf' });
    return handle.jsonValue();
  });
  if (resumedAt < 0.4) fail(`${NAME_LARGE} restarted at ${(resumedAt * 100).toFixed(1)} % instead of continuing from ${(pausedAt * 100).toFixed(1)} %`);
  log(`resumed at ${(resumedAt * 100).toFixed(1)} %`);

  const job = await uploadDone(page, NAME_LARGE, 240000);
  const after = await metric('upload_bytes_total');
  if (after - before !== size) {
    fail(`upload_bytes_total grew by ${after - before} (from ${before} to ${after}); the file has ${size} bytes`);
  }
  await converted(page, job, NAME_LARGE, 240000);
  await assertClean(page, 'jobs after resume');
  await page.close();
  passed(`2 ${NAME_LARGE} (${size} bytes) paused at ${(pausedAt * 100).toFixed(0)} %, reloaded, resumed at ${(resumedAt * 100).toFixed(0)} %, converted; upload_bytes_total +${size}`);
}

async function scenarioEmailLink() {
  const { page, fileA } = found;
  const bytesA = await apiBytes(page, `/v1/files/${fileA}`);

  const token = await poll(`no email to ${user.email} with a link to ${NAME_A} in MailDev`, async () => {
    const res = await fetch(`${MAILDEV}/api/email`);
    if (!res.ok) throw new Error(`MailDev answered ${res.status}`);
    const mails = (await res.json()).filter((m) => (m.to || []).some((t) => t.address?.toLowerCase() === user.email.toLowerCase()));
    const tokens = [];
    for (const m of mails) {
      for (const match of `${m.text || ''} ${m.html || ''}`.matchAll(/\/d\/([^\s"<>']+)/g)) {
        tokens.push(decodeURIComponent(match[1].replace(/&amp;/g, '&')));
      }
    }
    // Which link is A's: ask the server what each one names.
    for (const t of [...new Set(tokens)]) {
      const r = await fetch(`${BASE}/v1/downloads/${encodeURIComponent(t)}`, { headers: { Range: 'bytes=0-0' } });
      await r.arrayBuffer();
      const cd = r.headers.get('content-disposition') || '';
      if (r.ok && cd.includes(mp3Name(NAME_A).replace(/\.mp3$/, ''))) return t;
      if (r.ok && mails.some((m) => `${m.subject} ${m.text}`.includes(TITLE_A) && `${m.text} ${m.html}`.includes(t))) return t;
    }
    return null;
  }, { timeout: 60000, interval: 2000 });

  const context = await newContext('signed out link');
  const linkPage = await context.newPage();
  await linkPage.goto(`${BASE}/d/${token}`);
  await within('the link page shows no player', () => linkPage.locator('main audio').waitFor({ timeout: 15000 }));
  const title = (await linkPage.locator('main h1').textContent()).trim();
  if (!title || title === 'Shared track') fail(`the link page shows no track name (h1 "${title}")`);
  await playsAudio(linkPage.locator('main'), 'playing from the link page');
  await linkPage.locator('main audio').evaluate((a) => a.pause());
  const got = await download(linkPage, linkPage.getByRole('link', { name: /^Download/ }), 'downloading from the link page');
  if (!got.bytes.equals(bytesA)) fail(`the link's download (${got.bytes.length} bytes) differs from ${NAME_A}'s MP3 (${bytesA.length} bytes)`);
  await checkPage(linkPage, 'link');

  // One character changed in the middle (kept in the token's alphabet, not a separator).
  let i = Math.floor(token.length / 2);
  while (!/[A-Za-z0-9]/.test(token[i]) && i < token.length - 1) i++;
  const swapped = token[i] === 'A' ? 'B' : 'A';
  const tampered = token.slice(0, i) + swapped + token.slice(i + 1);
  await linkPage.goto(`${BASE}/d/${tampered}`);
  await within('the tampered link page said nothing', () =>
    linkPage.locator('main .status-error').waitFor({ timeout: 15000 }),
  );
  const said = (await linkPage.locator('main .status-error').textContent()).trim();
  if (!/altered/i.test(said)) fail(`the tampered link page says "${said}", not that the link was altered`);
  await checkPage(linkPage, 'link-tampered');
  await context.close();
  passed(`3 email link for ${NAME_A}: name "${title}", plays and downloads signed out; tampered link refused`);
}

async function pageAdmin() {
  if (!ADMIN_EMAIL || !ADMIN_PASSWORD) {
    log('ADMIN_EMAIL/ADMIN_PASSWORD not set: admin page not checked');
    return;
  }
  const context = await newContext('admin');
  const page = await context.newPage();
  await signInByKeyboard(page, ADMIN_EMAIL, ADMIN_PASSWORD);
  await page.getByRole('navigation').getByRole('link', { name: 'Admin' }).focus();
  await page.keyboard.press('Enter');
  await heading(page, 'Admin');
  await within(`the admin list shows no job of ${user.email}`, () =>
    page.locator('li.job .owner', { hasText: user.email }).first().waitFor({ timeout: 20000 }),
  );
  await checkPage(page, 'admin');
  await context.close();
}

// ---- main -----------------------------------------------------------------------------------

async function main() {
  const started = Date.now();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
  });
  try {
    await pagesSignedOut();
    await scenarioUploads();
    await scenarioResume();
    await scenarioEmailLink();
    await pageAdmin();
    passed(`4 accessibility: no serious or critical axe violations on ${axeDone.join(', ')}`);
    for (const context of contexts) {
      if (context.problems.length) fail(`errors in the ${context.label} context:\n  ${context.problems.join('\n  ')}`);
    }
    passed('5 CSP: headers present; no console errors, page errors or CSP violations on any page');
    passed(`6 screenshots in ${SHOTS}; no sideways scrolling at ${PHONE.width} px on ${phoneChecked.join(', ')}`);
    process.stderr.write(`web e2e passed in ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
  } finally {
    await browser.close().catch(() => {});
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`FAIL: ${err instanceof Failure ? err.message : err.stack || err}\n`);
    process.exit(1);
  },
);
