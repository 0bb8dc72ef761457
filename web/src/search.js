// Searching the catalogue as you type. The query lives in the address (?q=&tag=&artist=) so
// a search can be bookmarked or shared, and a late answer to an older query never
// overwrites a newer one.

import { useEffect, useRef, useState } from 'preact/hooks';
import { api, query } from './api.js';
import { html } from './html.js';
import { DownloadLink, Player, fileUrl } from './player.js';
import { useTitle } from './router.js';
import { Status } from './ui.js';

const DEBOUNCE_MS = 250;
const PAGE = 20;

function fromAddress() {
  const p = new URLSearchParams(location.search);
  return { q: p.get('q') || '', tag: p.get('tag') || '', artist: p.get('artist') || '' };
}

function Hit({ hit, onTag }) {
  const [track, setTrack] = useState(null); // { fileId, name } once asked for
  const [message, setMessage] = useState('');
  const title = hit.title || 'Untitled';
  const open = async () => {
    if (track) {
      setTrack(null);
      return;
    }
    try {
      const job = await api('GET', `/v1/jobs/${encodeURIComponent(hit.job_id)}`);
      if (!job.output) {
        setMessage('This track is not converted yet.');
        return;
      }
      setTrack({ fileId: job.output.file_id, name: job.source?.filename || title });
      setMessage('');
    } catch (err) {
      setMessage(err.message);
    }
  };
  return html`<li class="hit" data-job-id=${hit.job_id}>
    <h3 class="hit-title">${title}</h3>
    <p class="hit-by">${[hit.artist, hit.album].filter(Boolean).join(' — ') || 'Unknown artist'}</p>
    ${hit.tags?.length > 0 &&
    html`<ul class="tags" aria-label=${`Tags of ${title}`}>
      ${hit.tags.map((t) => html`<li><button type="button" class="tag" aria-label=${`Show tracks tagged ${t}`}
          onClick=${() => onTag(t)}>${t}</button></li>`)}
    </ul>`}
    <div class="actions">
      <button type="button" aria-pressed=${!!track} aria-label=${`${track ? 'Hide player for' : 'Play'} ${title}`}
        onClick=${open}>${track ? 'Hide player' : 'Play'}</button>
      ${track && html`<${DownloadLink} href=${fileUrl(track.fileId)} name=${track.name} />`}
    </div>
    ${message && html`<p class="status-error">${message}</p>`}
    ${track && html`<${Player} src=${fileUrl(track.fileId)} name=${title} autoPlay />`}
  </li>`;
}

export function SearchPage() {
  useTitle('Search');
  const [form, setForm] = useState(fromAddress);
  const [result, setResult] = useState(null); // { total, hits, next_cursor }
  const [message, setMessage] = useState('');
  const [error, setError] = useState(false);
  const seq = useRef(0);

  const empty = !form.q.trim() && !form.tag.trim() && !form.artist.trim();

  useEffect(() => {
    history.replaceState(null, '', `/search${query(form)}`);
    const mine = ++seq.current;
    if (empty) {
      setResult(null);
      setMessage('');
      return undefined;
    }
    const timer = setTimeout(async () => {
      try {
        const page = await api('GET', `/v1/search${query({ ...trimmed(form), limit: PAGE })}`);
        if (mine !== seq.current) return;
        setResult(page);
        setError(false);
        setMessage(page.total === 1 ? '1 result' : `${page.total} results`);
      } catch (err) {
        if (mine !== seq.current) return;
        setError(true);
        setMessage(err.message);
      }
    }, DEBOUNCE_MS);
    return () => clearTimeout(timer);
  }, [form.q, form.tag, form.artist]);

  const more = async () => {
    const mine = seq.current;
    try {
      const page = await api('GET', `/v1/search${query({ ...trimmed(form), limit: PAGE, cursor: result.next_cursor })}`);
      if (mine !== seq.current) return;
      const known = new Set(result.hits.map((h) => h.job_id));
      setResult({ ...page, hits: [...result.hits, ...page.hits.filter((h) => !known.has(h.job_id))] });
    } catch (err) {
      setError(true);
      setMessage(err.message);
    }
  };

  const field = (name, label, type = 'text') => html`<div class="field">
    <label for=${`search-${name}`}>${label}</label>
    <input id=${`search-${name}`} name=${name} type=${type} autocomplete="off" value=${form[name]}
      onInput=${(e) => setForm({ ...form, [name]: e.currentTarget.value })} />
  </div>`;

  return html`<h1 tabindex="-1">Search</h1>
    <section class="panel" aria-labelledby="search-heading">
      <h2 id="search-heading" class="visually-hidden">Search the catalogue</h2>
      <form class="grid search-form" role="search" onSubmit=${(e) => e.preventDefault()}>
        ${field('q', 'Title, artist or album', 'search')} ${field('tag', 'Tag')} ${field('artist', 'Artist')}
      </form>
      <${Status} message=${empty ? 'Type to search; small typos are fine.' : message} error=${error} />
      ${result &&
      html`<ul class="hits">
        ${result.hits.map((hit) => html`<${Hit} key=${hit.job_id} hit=${hit} onTag=${(tag) => setForm({ ...form, tag })} />`)}
      </ul>`}
      ${result?.next_cursor && html`<button type="button" onClick=${more}>More results</button>`}
    </section>`;
}

function trimmed(form) {
  return { q: form.q.trim(), tag: form.tag.trim(), artist: form.artist.trim() };
}
