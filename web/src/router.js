// Client-side routes on the history API; the gateway serves index.html for each of them.

import { html } from './html.js';
import { useEffect, useState } from 'preact/hooks';

const CHANGE = 'tunewire:navigate';

export function navigate(to, { replace = false } = {}) {
  if (to === location.pathname + location.search) return;
  history[replace ? 'replaceState' : 'pushState'](null, '', to);
  dispatchEvent(new Event(CHANGE));
}

/** The current path and query; re-renders on navigation and back/forward. */
export function useLocation() {
  const read = () => ({ path: location.pathname, search: location.search });
  const [loc, setLoc] = useState(read);
  useEffect(() => {
    const update = () => setLoc(read());
    addEventListener('popstate', update);
    addEventListener(CHANGE, update);
    return () => {
      removeEventListener('popstate', update);
      removeEventListener(CHANGE, update);
    };
  }, []);
  return loc;
}

/** Which view a path shows, and whether it needs a signed-in user. */
export function route(path) {
  // The gateway serves /sign-up/ as /sign-up; so do we.
  if (path.length > 1) path = path.replace(/\/+$/, '');
  if (path === '/') return { name: 'jobs', auth: true };
  if (path === '/sign-in') return { name: 'sign-in', auth: false };
  if (path === '/sign-up') return { name: 'sign-up', auth: false };
  if (path === '/search') return { name: 'search', auth: true };
  if (path === '/admin') return { name: 'admin', auth: true };
  const link = /^\/d\/([^/]+)$/.exec(path);
  if (link) return { name: 'link', auth: false, token: link[1] };
  return { name: 'not-found', auth: false };
}

/** An ordinary link that navigates in place (modified clicks still open new tabs). */
export function Link({ href, children, ...rest }) {
  const onClick = (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${onClick} ...${rest}>${children}</a>`;
}

/** Sets the page title for a view. */
export function useTitle(title) {
  useEffect(() => {
    document.title = title ? `${title} · Tunewire` : 'Tunewire';
  }, [title]);
}
