// Entry point: the header, the route's view, and who is signed in.

import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import './app.css';
import { onSessionEnded } from './api.js';
import { AdminPage } from './admin.js';
import { SignInPage, SignUpPage } from './auth.js';
import { html } from './html.js';
import { JobsPage } from './jobs.js';
import { LinkPage } from './link.js';
import { Link, navigate, route, useLocation, useTitle } from './router.js';
import { SearchPage } from './search.js';
import { loadMe, signOut } from './session.js';
import { Status } from './ui.js';
import { setUploadOwner } from './uploads.js';

function Header({ me, path, onSignOut }) {
  const current = (href) => (path === href ? 'page' : undefined);
  return html`<header class="top">
    <a class="skip" href="#main">Skip to content</a>
    <${Link} class="brand" href=${me ? '/' : '/sign-in'}>Tunewire</${Link}>
    <nav aria-label="Main">
      <ul>
        ${me
          ? html`<li><${Link} href="/" aria-current=${current('/')}>Jobs</${Link}></li>
              <li><${Link} href="/search" aria-current=${current('/search')}>Search</${Link}></li>
              ${me.role === 'admin' &&
              html`<li><${Link} href="/admin" aria-current=${current('/admin')}>Admin</${Link}></li>`}`
          : html`<li><${Link} href="/sign-in" aria-current=${current('/sign-in')}>Sign in</${Link}></li>
              <li><${Link} href="/sign-up" aria-current=${current('/sign-up')}>Sign up</${Link}></li>`}
      </ul>
    </nav>
    ${me &&
    html`<div class="who">
      <span class="email" title="Signed in as">${me.email}</span>
      <button type="button" onClick=${onSignOut}>Sign out</button>
    </div>`}
  </header>`;
}

function NotFound() {
  useTitle('Not found');
  return html`<h1 tabindex="-1">Page not found</h1>
    <p>There is nothing at this address. <${Link} href="/">Go to your jobs</${Link}></p>`;
}

function Loading() {
  return html`<${Status} message="Loading…" />`;
}

function App() {
  const { path } = useLocation();
  const view = route(path);
  // undefined: not known yet; null: signed out.
  const [me, setMe] = useState(undefined);
  const [notice, setNotice] = useState('');
  const [problem, setProblem] = useState('');
  const mainRef = useRef(null);

  useEffect(() => {
    onSessionEnded(() => {
      setMe(null);
      setNotice('Your session ended; sign in again.');
      navigate('/sign-in');
    });
  }, []);

  // Who is signed in, asked once, and only when a view needs it: a signed link works without.
  const needMe = view.name !== 'link' && view.name !== 'not-found';
  useEffect(() => {
    if (!needMe || me !== undefined) return;
    loadMe().then(setMe, (err) => setProblem(err.message));
  }, [needMe, me]);

  useEffect(() => {
    if (me !== undefined) setUploadOwner(me?.id ?? '');
  }, [me]);

  // Redirects: signed-out users to sign in, signed-in users away from the sign-in forms.
  useEffect(() => {
    if (me === undefined) return;
    if (view.auth && me === null) navigate('/sign-in', { replace: true });
    if (!view.auth && me && (view.name === 'sign-in' || view.name === 'sign-up')) navigate('/', { replace: true });
  }, [view.name, me]);

  // Move focus to the new page's heading so keyboard and screen reader users start there.
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    mainRef.current?.querySelector('h1')?.focus();
  }, [path]);

  const signedIn = (account) => {
    setNotice('');
    setMe(account);
    navigate('/');
  };

  const onSignOut = async () => {
    try {
      await signOut();
    } catch (err) {
      setProblem(err.message);
      return;
    }
    setMe(null);
    setNotice('You are signed out.');
    navigate('/sign-in');
  };

  let body;
  if (problem) body = html`<h1 tabindex="-1">Tunewire</h1><${Status} message=${problem} error />`;
  else if (view.name === 'link') body = html`<${LinkPage} token=${view.token} />`;
  else if (view.name === 'not-found') body = html`<${NotFound} />`;
  else if (me === undefined || (view.auth && !me)) body = html`<${Loading} />`;
  else if (view.name === 'sign-in') body = html`<${SignInPage} notice=${notice} onSignedIn=${signedIn} />`;
  else if (view.name === 'sign-up') body = html`<${SignUpPage} onSignedIn=${signedIn} />`;
  else if (view.name === 'jobs') body = html`<${JobsPage} />`;
  else if (view.name === 'search') body = html`<${SearchPage} />`;
  else if (view.name === 'admin') body = html`<${AdminPage} me=${me} />`;

  return html`<${Header} me=${me} path=${path} onSignOut=${onSignOut} />
    <main id="main" ref=${mainRef} tabindex="-1">${body}</main>`;
}

render(html`<${App} />`, document.getElementById('app'));
