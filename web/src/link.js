// The page a signed link (/d/<token>, e.g. from the "your track is ready" email) opens. It
// needs no account: the token is the permission. One byte is asked for first, which says
// whether the link is good and what the track is called without downloading it.

import { useEffect, useState } from 'preact/hooks';
import { errorFromBody } from './api.js';
import { dispositionName } from './format.js';
import { html } from './html.js';
import { DownloadLink, Player } from './player.js';
import { useTitle } from './router.js';
import { Status } from './ui.js';

const REFUSALS = {
  link_expired: 'This link has expired.',
  link_tampered: 'This link was altered and is not valid.',
  link_malformed: 'This is not a valid link.',
};

export function LinkPage({ token }) {
  const [state, setState] = useState({ phase: 'loading' });
  const src = `/v1/downloads/${encodeURIComponent(decodeURIComponentSafe(token))}`;
  useTitle(state.phase === 'ready' ? state.name : state.phase === 'refused' ? 'Link not valid' : 'Shared track');

  useEffect(() => {
    let stopped = false;
    (async () => {
      let res;
      try {
        res = await fetch(src, { headers: { Range: 'bytes=0-0' }, credentials: 'omit' });
      } catch {
        if (!stopped) setState({ phase: 'refused', message: 'The server could not be reached; try again later.' });
        return;
      }
      // The one byte asked for is not needed; stop the body.
      const body = await res.text().catch(() => '');
      if (stopped) return;
      if (res.ok) {
        setState({ phase: 'ready', name: dispositionName(res.headers.get('content-disposition')) || 'Your track' });
      } else if (res.status === 404) {
        setState({ phase: 'refused', message: 'This track is no longer available.' });
      } else {
        const err = errorFromBody(res.status, body);
        setState({ phase: 'refused', message: REFUSALS[err.code] || err.message });
      }
    })();
    return () => {
      stopped = true;
    };
  }, [src]);

  return html`<h1 tabindex="-1">${state.phase === 'ready' ? state.name : 'Shared track'}</h1>
    <section class="panel link-page" aria-label="Shared track">
      ${state.phase === 'loading' && html`<${Status} message="Checking the link…" />`}
      ${state.phase === 'refused' && html`<${Status} message=${state.message} error />`}
      ${state.phase === 'ready' &&
      html`<${Status} message="Ready to play." />
        <${Player} src=${src} name=${state.name} />
        <div class="actions"><${DownloadLink} href=${src} name=${state.name} /></div>`}
    </section>`;
}

function decodeURIComponentSafe(s) {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
