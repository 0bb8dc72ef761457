// Resumable uploads with tus (tus.io): files are sent in 8 MiB chunks, each a checkpoint, so
// pausing, a dropped connection or a page reload loses at most one chunk. tus-js-client
// remembers each unfinished upload in localStorage under a fingerprint of the file (name, type,
// size, modification time), which is how picking the same file again continues it.
//
// The uploads live in a module-level store rather than in a component, so they keep going
// while the user visits other pages of the app.

import * as tus from 'tus-js-client';
import { useEffect, useState } from 'preact/hooks';
import { csrfToken, errorFromBody, reportSessionEnded } from './api.js';
import { html } from './html.js';
import { bytes, wait, when } from './format.js';
import { Status } from './ui.js';

const CHUNK_SIZE = 8 * 1024 * 1024;
const PRESETS = [
  ['cbr128', '128 kb/s'],
  ['cbr192', '192 kb/s (default)'],
  ['cbr256', '256 kb/s'],
  ['cbr320', '320 kb/s'],
  ['v0', 'Variable, best (V0)'],
  ['v2', 'Variable, smaller (V2)'],
];

// ---- store -------------------------------------------------------------------------------

const store = { items: [], remembered: [], notice: '' };
const listeners = new Set();
const running = new Map(); // item key -> tus.Upload
const meters = new Map(); // item key -> { t, sent, speed } for speed and time left
let nextKey = 1;

function emit() {
  for (const listener of listeners) listener();
}

function set(changes) {
  Object.assign(store, changes);
  emit();
}

function item(key) {
  return store.items.find((i) => i.key === key);
}

function update(key, changes) {
  set({ items: store.items.map((i) => (i.key === key ? { ...i, ...changes } : i)) });
}

function useStore() {
  const [, rerender] = useState(0);
  useEffect(() => {
    const listener = () => rerender((n) => n + 1);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }, []);
  return store;
}

// ---- actions -----------------------------------------------------------------------------

export function addFiles(files) {
  const added = [...files].map((file) => ({
    key: nextKey++,
    file,
    name: file.name,
    title: '',
    artist: '',
    album: '',
    preset: 'cbr192',
    loudnorm: false,
    status: 'ready', // ready | starting | uploading | paused | done | failed
    sent: 0,
    total: file.size,
    speed: 0,
    message: '',
    retryable: false,
    jobId: null,
  }));
  if (!added.length) return;
  set({
    items: [...store.items, ...added],
    notice: `Added ${added.length === 1 ? added[0].name : `${added.length} files`}. Fill in the details, then upload.`,
  });
}

/** Bytes per second, smoothed so the number does not jump around with every event. */
function measure(key, sent) {
  const now = performance.now();
  const m = meters.get(key);
  if (!m || sent < m.sent) {
    meters.set(key, { t: now, sent, speed: 0 });
    return 0;
  }
  const dt = (now - m.t) / 1000;
  if (dt < 0.5) return m.speed;
  const instant = (sent - m.sent) / dt;
  const speed = m.speed ? 0.7 * m.speed + 0.3 * instant : instant;
  meters.set(key, { t: now, sent, speed });
  return speed;
}

function statusOf(err) {
  return err?.originalResponse ? err.originalResponse.getStatus() : 0;
}

/** The server's words for a refusal (its JSON `message`), else a plain description. */
function describe(err) {
  const res = err?.originalResponse;
  if (res) return errorFromBody(res.getStatus(), res.getBody()).message;
  return 'The connection was lost; press Resume to continue.';
}

/** Drops tus-js-client's memory of an upload the server refused for good. */
async function forget(uploadUrl) {
  if (!uploadUrl) return;
  const storage = tus.defaultOptions.urlStorage;
  const all = await storage.findAllUploads();
  await Promise.all(all.filter((u) => u.uploadUrl === uploadUrl).map((u) => storage.removeUpload(u.urlStorageKey)));
}

// Whose uploads these are: each fingerprint starts with the account's id, so after a sign-out
// another account on this browser neither sees nor continues them.
let owner = '';

/** Called with the signed-in account's id ('' when signed out). */
export function setUploadOwner(id) {
  if (owner === (id || '')) return;
  owner = id || '';
  forgetUnowned();
  for (const upload of running.values()) upload.abort().catch(() => {});
  running.clear();
  meters.clear();
  set({ items: [], remembered: [], notice: '' });
  if (owner) refreshRemembered();
}

/** Drops remembered uploads whose fingerprint names no account (made before they did). */
function forgetUnowned() {
  try {
    for (const key of Object.keys(localStorage)) {
      if (key.startsWith('tus::') && !/^tus::[0-9a-f-]{36}\//.test(key)) localStorage.removeItem(key);
    }
  } catch {
    // no localStorage: nothing to forget
  }
}

async function fingerprint(file, options) {
  return `${owner}/${await tus.defaultOptions.fingerprint(file, options)}`;
}

export async function refreshRemembered() {
  let all = [];
  try {
    all = await tus.defaultOptions.urlStorage.findAllUploads();
  } catch {
    // no localStorage (private mode): nothing is remembered
  }
  const active = new Set([...running.values()].map((u) => u.url).filter(Boolean));
  const remembered = all
    .filter((u) => owner && u.urlStorageKey?.startsWith(`tus::${owner}/`))
    .filter((u) => !active.has(u.uploadUrl))
    .sort((a, b) => (Date.parse(b.creationTime) || 0) - (Date.parse(a.creationTime) || 0));
  set({ remembered });
}

// The CSRF header is set here and not in the `headers` option: XMLHttpRequest appends a
// header set twice ("a, a"), which the gateway rightly refuses. Read at every request: the
// token changes when the user signs in again.
function onBeforeRequest(req) {
  req.setHeader('X-CSRF-Token', csrfToken());
}

export async function start(key) {
  const it = item(key);
  if (!it) return;
  const existing = running.get(key);
  if (existing) {
    // Paused or interrupted: tus asks the server for its offset and continues from there.
    update(key, { status: 'uploading', message: '', retryable: false });
    existing.start();
    return;
  }
  if (it.status !== 'ready') return;

  const metadata = { filename: it.file.name, preset: it.preset };
  if (it.file.type) metadata.filetype = it.file.type;
  for (const field of ['title', 'artist', 'album']) {
    if (it[field].trim()) metadata[field] = it[field].trim();
  }
  if (it.loudnorm) metadata.loudnorm = 'true';

  const upload = new tus.Upload(it.file, {
    endpoint: '/v1/tus/',
    chunkSize: CHUNK_SIZE,
    retryDelays: [0, 1000, 3000, 5000],
    metadata,
    fingerprint,
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onBeforeRequest,
    onAfterResponse(_req, res) {
      // The last byte's response names the job the upload became.
      const jobId = res.getHeader('Tunewire-Job-Id');
      if (jobId && item(key)?.jobId !== jobId) update(key, { jobId });
    },
    onProgress(sent, total) {
      update(key, { sent, total, speed: measure(key, sent) });
    },
    onSuccess() {
      meters.delete(key);
      const done = item(key);
      update(key, { status: 'done', sent: done?.total ?? it.total, speed: 0, message: 'Uploaded; converting now.' });
      set({ notice: `${it.name} uploaded.` });
      running.delete(key);
      refreshRemembered();
    },
    onError(err) {
      const status = statusOf(err);
      if (status === 401) reportSessionEnded();
      // A 4xx other than 409/423 is final (not media, too large, over quota, ...).
      const final = status >= 400 && status < 500 && status !== 409 && status !== 423;
      meters.delete(key);
      update(key, { status: 'failed', speed: 0, message: describe(err), retryable: !final });
      set({ notice: `${it.name}: ${describe(err)}` });
      if (final) {
        running.delete(key);
        forget(upload.url).then(refreshRemembered, () => {});
      }
    },
    onShouldRetry(err) {
      const status = statusOf(err);
      if (status >= 400 && status < 500) return status === 409 || status === 423;
      return navigator.onLine !== false;
    },
  });
  running.set(key, upload);
  update(key, { status: 'starting', message: '' });

  try {
    const previous = await upload.findPreviousUploads();
    if (previous.length) {
      previous.sort((a, b) => (Date.parse(b.creationTime) || 0) - (Date.parse(a.creationTime) || 0));
      upload.resumeFromPreviousUpload(previous[0]);
      update(key, { message: 'Continuing where the earlier upload stopped.' });
    }
  } catch {
    // Nothing to resume from: a fresh upload.
  }
  if (running.get(key) !== upload) return; // cancelled meanwhile
  update(key, { status: 'uploading' });
  upload.start();
  refreshRemembered();
}

export function startAll() {
  for (const it of store.items) if (it.status === 'ready') start(it.key);
}

export function pause(key) {
  const upload = running.get(key);
  if (!upload) return;
  upload.abort();
  meters.delete(key);
  update(key, { status: 'paused', speed: 0, message: 'Paused. Resume continues from the last saved chunk.' });
  refreshRemembered();
}

/** Cancel: stops the upload and deletes what the server has of it. */
export async function cancel(key) {
  const it = item(key);
  const upload = running.get(key);
  running.delete(key);
  meters.delete(key);
  set({ items: store.items.filter((i) => i.key !== key), notice: it ? `Cancelled ${it.name}.` : '' });
  if (upload) {
    try {
      await upload.abort(true);
    } catch {
      await forget(upload.url).catch(() => {});
    }
  }
  refreshRemembered();
}

export function remove(key) {
  const it = item(key);
  set({ items: store.items.filter((i) => i.key !== key), notice: it ? `Removed ${it.name} from the list.` : '' });
}

/** Forgets an unfinished upload from an earlier visit and deletes it on the server. */
export async function discard(entry) {
  const name = entry.metadata?.filename || 'the upload';
  try {
    await tus.Upload.terminate(entry.uploadUrl, { onBeforeRequest, retryDelays: [] });
  } catch {
    // Already gone on the server (expired or finished): forgetting it is all that is left.
  }
  await tus.defaultOptions.urlStorage.removeUpload(entry.urlStorageKey).catch(() => {});
  set({ notice: `Discarded the unfinished upload of ${name}.` });
  refreshRemembered();
}

// ---- views -------------------------------------------------------------------------------

function Field({ id, label, value, onInput }) {
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <input id=${id} name=${label.toLowerCase()} type="text" autocomplete="off" value=${value}
      onInput=${(e) => onInput(e.currentTarget.value)} />
  </div>`;
}

/** What an upload was sent with, once its fields are no longer editable. */
function summary(it) {
  const preset = PRESETS.find(([value]) => value === it.preset)?.[1].replace(' (default)', '') ?? it.preset;
  const words = [it.title.trim() || 'No title', it.artist.trim(), it.album.trim()].filter(Boolean).join(' · ');
  return `${words} — ${preset}${it.loudnorm ? ', loudness evened out' : ''}`;
}

function UploadItem({ it }) {
  const id = `upload-${it.key}`;
  const editable = it.status === 'ready';
  const started = it.status !== 'ready';
  const left = it.speed > 0 ? wait((it.total - it.sent) / it.speed) : null;
  const edit = (field) => (value) => update(it.key, { [field]: value });
  return html`<li class=${`upload upload-${it.status}`} data-file-name=${it.name} data-status=${it.status}
      data-job-id=${it.jobId || undefined}>
    ${editable
      ? html`<fieldset>
      <legend><span class="upload-name">${it.name}</span> <span class="muted">${bytes(it.total)}</span></legend>
      <div class="grid">
        <${Field} id=${`${id}-title`} label="Title" value=${it.title} onInput=${edit('title')} />
        <${Field} id=${`${id}-artist`} label="Artist" value=${it.artist} onInput=${edit('artist')} />
        <${Field} id=${`${id}-album`} label="Album" value=${it.album} onInput=${edit('album')} />
        <div class="field">
          <label for=${`${id}-preset`}>MP3 quality</label>
          <select id=${`${id}-preset`} name="preset" value=${it.preset}
            onChange=${(e) => update(it.key, { preset: e.currentTarget.value })}>
            ${PRESETS.map(([value, words]) => html`<option value=${value}>${words}</option>`)}
          </select>
        </div>
        <div class="field field-check">
          <input id=${`${id}-loudnorm`} name="loudnorm" type="checkbox" checked=${it.loudnorm}
            onChange=${(e) => update(it.key, { loudnorm: e.currentTarget.checked })} />
          <label for=${`${id}-loudnorm`}>Even out loudness</label>
        </div>
      </div>
    </fieldset>`
      : html`<h3 class="upload-head"><span class="upload-name">${it.name}</span> <span class="muted">${bytes(it.total)}</span></h3>
        <p class="muted upload-summary">${summary(it)}</p>`}
    ${started &&
    html`<div class="upload-progress">
      <progress max=${it.total || 1} value=${it.sent} aria-label=${`Upload of ${it.name}`}></progress>
      <p class="upload-stats">
        ${bytes(it.sent)} of ${bytes(it.total)}
        ${it.status === 'uploading' && it.speed > 0 && html` · ${bytes(it.speed)}/s · ${left} left`}
      </p>
    </div>`}
    ${it.message && html`<p class=${it.status === 'failed' ? 'upload-message status-error' : 'upload-message'}>${it.message}</p>`}
    ${it.jobId && html`<p><a href=${`#job-${it.jobId}`} aria-label=${`Show the job of ${it.name}`}>Show the job</a></p>`}
    <div class="actions">
      ${it.status === 'ready' &&
      html`<button type="button" aria-label=${`Upload ${it.name}`} onClick=${() => start(it.key)}>Upload</button>`}
      ${it.status === 'uploading' &&
      html`<button type="button" aria-label=${`Pause ${it.name}`} onClick=${() => pause(it.key)}>Pause</button>`}
      ${(it.status === 'paused' || (it.status === 'failed' && it.retryable)) &&
      html`<button type="button" aria-label=${`Resume ${it.name}`} onClick=${() => start(it.key)}>Resume</button>`}
      ${['starting', 'uploading', 'paused'].includes(it.status) || (it.status === 'failed' && it.retryable)
        ? html`<button type="button" class="danger" aria-label=${`Cancel ${it.name}`} onClick=${() => cancel(it.key)}>Cancel</button>`
        : html`<button type="button" aria-label=${`Remove ${it.name}`} onClick=${() => remove(it.key)}>Remove</button>`}
    </div>
  </li>`;
}

function DropZone() {
  const [over, setOver] = useState(false);
  const onDragOver = (e) => {
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
    setOver(true);
  };
  const onDrop = (e) => {
    e.preventDefault();
    setOver(false);
    addFiles(e.dataTransfer.files);
  };
  const onChange = (e) => {
    addFiles(e.currentTarget.files);
    e.currentTarget.value = ''; // so picking the same file again fires another change
  };
  return html`<div class=${over ? 'drop drop-over' : 'drop'} onDragOver=${onDragOver}
      onDragLeave=${() => setOver(false)} onDrop=${onDrop}>
    <p>Drop audio or video files here, or</p>
    <input id="file-input" class="file-input" type="file" multiple accept="audio/*,video/*" onChange=${onChange} />
    <label for="file-input" class="button primary">Choose files</label>
  </div>`;
}

export function Uploads() {
  const s = useStore();
  useEffect(() => {
    refreshRemembered();
  }, []);
  const ready = s.items.filter((i) => i.status === 'ready').length;
  return html`<section class="panel" aria-labelledby="upload-heading">
    <h2 id="upload-heading">Upload</h2>
    <${DropZone} />
    <${Status} message=${s.notice} />
    ${s.remembered.length > 0 &&
    html`<div class="remembered">
      <h3>Unfinished uploads</h3>
      <ul>
        ${s.remembered.map((entry) => {
          const name = entry.metadata?.filename || 'a file';
          return html`<li class="remembered-item" data-file-name=${name}>
            <span>Pick <strong>${name}</strong> (${bytes(entry.size)}${entry.creationTime ? `, started ${when(entry.creationTime)}` : ''}) again to resume.</span>
            <button type="button" aria-label=${`Discard unfinished upload of ${name}`} onClick=${() => discard(entry)}>Discard</button>
          </li>`;
        })}
      </ul>
    </div>`}
    ${s.items.length > 0 &&
    html`<ul class="uploads">
      ${s.items.map((it) => html`<${UploadItem} key=${it.key} it=${it} />`)}
    </ul>`}
    ${ready > 0 &&
    html`<button type="button" class="primary" onClick=${startAll}>Upload all (${ready})</button>`}
  </section>`;
}
