// The list of conversion jobs, kept live by the gateway's event stream: each time the stream
// (re)opens, the list is read once from GET /v1/jobs, then every `job` event is applied on top.
// Nothing polls.

import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { api, query } from './api.js';
import { html } from './html.js';
import { STATES, bytes, duration, kbps, percent, stateWords, when } from './format.js';
import { DownloadLink, Player, fileUrl } from './player.js';
import { ConfirmDialog, Status } from './ui.js';
import { useTitle } from './router.js';
import { Uploads } from './uploads.js';

const PAGE = 50;

// The gateway's times are UTC with up to nine fraction digits ("...T10:00:00.123456Z"); with
// the fraction padded they sort as text, to the nanosecond (Date.parse stops at the ms).
const stamp = (t) => (typeof t === 'string' ? t.replace(/(?:\.(\d+))?Z$/, (_, f = '') => `.${f.padEnd(9, '0')}Z`) : '');
const newestFirst = (a, b) => (stamp(a.created_at) < stamp(b.created_at) ? 1 : stamp(a.created_at) > stamp(b.created_at) ? -1 : 0);

/** The later of two versions of one job; on a tie, the one that came last (`b`). */
function newer(a, b) {
  if (!a) return b;
  if (!b) return a;
  return stamp(a.updated_at) > stamp(b.updated_at) ? a : b;
}

// Jobs deleted from this page: an event or a list read already under way may still carry
// them, and must not bring them back.
const deleted = new Set();

function upsert(list, job, stateFilter) {
  const rest = list.filter((j) => j.id !== job.id);
  if (deleted.has(job.id)) return rest;
  const current = list.find((j) => j.id === job.id);
  const latest = newer(current, job);
  if (stateFilter && latest.state !== stateFilter) return rest;
  return [...rest, latest].sort(newestFirst);
}

/**
 * Jobs matching `stateFilter` (all when empty), live. Returns the list, whether more pages
 * exist, and actions.
 */
export function useJobFeed(stateFilter) {
  const [jobs, setJobs] = useState([]);
  const [cursor, setCursor] = useState(null);
  const [loaded, setLoaded] = useState(false);
  const [message, setMessage] = useState('');
  const [live, setLive] = useState('connecting');

  useEffect(() => {
    let stopped = false;
    let source = null;
    let retry = null;
    let backoff = 2000;
    let loadSeq = 0;
    // Events seen since the stream last opened: the GET answer may predate them.
    let seen = new Map();

    const load = async () => {
      const seq = ++loadSeq;
      try {
        const page = await api('GET', `/v1/jobs${query({ state: stateFilter, limit: PAGE })}`);
        if (stopped || seq !== loadSeq) return;
        setJobs(() => {
          let list = page.jobs.filter((j) => !deleted.has(j.id)).map((j) => newer(seen.get(j.id), j));
          for (const job of seen.values()) list = upsert(list, job, stateFilter);
          return list.sort(newestFirst);
        });
        setCursor(page.next_cursor);
        setLoaded(true);
        setMessage('');
      } catch (err) {
        if (!stopped) setMessage(err.message);
      }
    };

    const connect = () => {
      source = new EventSource('/v1/events');
      source.addEventListener('open', () => {
        backoff = 2000;
        seen = new Map();
        setLive('live');
        load();
      });
      source.addEventListener('job', (e) => {
        let job;
        try {
          job = JSON.parse(e.data);
        } catch {
          return;
        }
        seen.set(job.id, newer(seen.get(job.id), job));
        setJobs((list) => upsert(list, job, stateFilter));
      });
      // A job deleted anywhere (another tab, another device, an admin).
      source.addEventListener('deleted', (e) => {
        deleted.add(e.data);
        setJobs((list) => list.filter((j) => j.id !== e.data));
      });
      source.addEventListener('error', () => {
        if (stopped) return;
        if (source.readyState !== EventSource.CLOSED) {
          setLive('reconnecting'); // the browser retries by itself
          return;
        }
        // A refusal (401, 429, 5xx) closes the stream for good: find out why, then retry later.
        setLive('reconnecting');
        source.close();
        api('GET', '/v1/me').then(
          () => schedule(),
          (err) => err.status !== 401 && schedule(),
        );
      });
    };

    const schedule = () => {
      if (stopped) return;
      retry = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    };

    // Signed-out pages never get here; should the session end meanwhile, api() reports it.
    connect();
    // Show the list even before the stream opens (e.g. when streams are at their limit).
    load();
    return () => {
      stopped = true;
      clearTimeout(retry);
      source?.close();
    };
  }, [stateFilter]);

  const more = useCallback(async () => {
    if (!cursor) return;
    try {
      const page = await api('GET', `/v1/jobs${query({ state: stateFilter, limit: PAGE, cursor })}`);
      setJobs((list) => {
        let merged = list;
        for (const job of page.jobs) merged = upsert(merged, job, stateFilter);
        return merged;
      });
      setCursor(page.next_cursor);
    } catch (err) {
      setMessage(err.message);
    }
  }, [cursor, stateFilter]);

  const remove = useCallback(async (job) => {
    await api('DELETE', `/v1/jobs/${encodeURIComponent(job.id)}`).catch((err) => {
      // Already gone (deleted elsewhere): what was asked for is done.
      if (err.status !== 404) throw err;
    });
    deleted.add(job.id);
    setJobs((list) => list.filter((j) => j.id !== job.id));
  }, []);

  return { jobs, loaded, more: cursor ? more : null, remove, message, live };
}

function StateFilter({ value, onChange, id }) {
  return html`<div class="field field-inline">
    <label for=${id}>Show</label>
    <select id=${id} value=${value} onChange=${(e) => onChange(e.currentTarget.value)}>
      <option value="">All jobs</option>
      ${STATES.map((s) => html`<option value=${s}>${stateWords(s)}</option>`)}
    </select>
  </div>`;
}

function JobItem({ job, showOwner, onDelete }) {
  const [playing, setPlaying] = useState(false);
  const name = job.source?.filename || 'Untitled upload';
  const out = job.output;
  return html`<li class="job" id=${`job-${job.id}`} data-job-id=${job.id} data-state=${job.state}>
    <div class="job-head">
      <h3 class="job-name">${name}</h3>
      <span class=${`badge state-${job.state}`}>${stateWords(job.state)}</span>
    </div>
    ${job.state === 'converting' &&
    html`<div class="job-progress">
      <progress max="1" value=${job.progress ?? 0} aria-label=${`Converting ${name}`}></progress>
      <span>${percent(job.progress)}</span>
    </div>`}
    ${job.state === 'failed' && html`<p class="job-error">Failed: ${job.error || 'the conversion did not succeed.'}</p>`}
    <dl class="job-meta">
      ${showOwner && html`<div><dt>Owner</dt><dd class="owner">${job.owner_email}</dd></div>`}
      <div><dt>Size</dt><dd>${bytes(job.source?.size)}</dd></div>
      ${out && html`<div><dt>Duration</dt><dd>${duration(out.duration_s)}</dd></div>`}
      ${out?.bitrate && html`<div><dt>Bitrate</dt><dd>${kbps(out.bitrate)}</dd></div>`}
      <div><dt>Preset</dt><dd>${job.preset}</dd></div>
      <div><dt>Added</dt><dd><time datetime=${job.created_at}>${when(job.created_at)}</time></dd></div>
    </dl>
    ${job.tags?.length > 0 &&
    html`<ul class="tags" aria-label=${`Tags of ${name}`}>
      ${job.tags.map((t) => html`<li class="tag">${t}</li>`)}
    </ul>`}
    <div class="actions">
      ${out &&
      html`<button type="button" aria-pressed=${playing} aria-label=${`${playing ? 'Hide player for' : 'Play'} ${name}`}
          onClick=${() => setPlaying(!playing)}>${playing ? 'Hide player' : 'Play'}</button>
        <${DownloadLink} href=${fileUrl(out.file_id)} name=${name} />`}
      <button type="button" class="danger" aria-label=${`Delete ${name}`} onClick=${() => onDelete(job)}>Delete</button>
    </div>
    ${out && playing && html`<${Player} src=${fileUrl(out.file_id)} name=${name} autoPlay />`}
  </li>`;
}

/** The job list with its filter, live status, paging and delete confirmation. */
export function JobList({ heading, showOwner = false }) {
  const [stateFilter, setStateFilter] = useState('');
  const feed = useJobFeed(stateFilter);
  const [doomed, setDoomed] = useState(null);
  const [notice, setNotice] = useState('');
  const busy = useRef(false);

  const confirmDelete = async () => {
    const job = doomed;
    if (!job || busy.current) return;
    busy.current = true;
    const name = job.source?.filename || 'the upload';
    try {
      await feed.remove(job);
      setNotice(`Deleted ${name}.`);
    } catch (err) {
      setNotice(`Could not delete ${name}: ${err.message}`);
    } finally {
      busy.current = false;
      setDoomed(null);
    }
  };

  const liveWords = { live: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting…' }[feed.live];
  return html`<section class="panel" aria-labelledby="jobs-heading">
    <div class="panel-head">
      <h2 id="jobs-heading">${heading}</h2>
      <span class=${`live live-${feed.live}`}>${liveWords}</span>
      <${StateFilter} id="job-state" value=${stateFilter} onChange=${setStateFilter} />
    </div>
    <${Status} message=${notice || feed.message} error=${!!feed.message && !notice} />
    ${feed.loaded && feed.jobs.length === 0 &&
    html`<p class="empty">${stateFilter ? `No jobs are ${stateWords(stateFilter).toLowerCase()}.` : 'No jobs yet.'}</p>`}
    <ul class="jobs">
      ${feed.jobs.map((job) => html`<${JobItem} key=${job.id} job=${job} showOwner=${showOwner} onDelete=${setDoomed} />`)}
    </ul>
    ${feed.more && html`<button type="button" onClick=${feed.more}>Load more jobs</button>`}
    <${ConfirmDialog}
      open=${!!doomed}
      title="Delete this job?"
      text=${doomed ? `${doomed.source?.filename || 'This upload'} and its MP3 will be removed for good.` : ''}
      confirmLabel="Delete"
      onConfirm=${confirmDelete}
      onCancel=${() => setDoomed(null)}
    />
  </section>`;
}

export function JobsPage() {
  useTitle('Jobs');
  return html`<h1 tabindex="-1">Your music</h1>
    <${Uploads} />
    <${JobList} heading="Jobs" />`;
}
