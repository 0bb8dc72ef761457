// Signing in and out. The session itself lives in an HttpOnly cookie the page never sees;
// the page only learns who it is from GET /v1/me.

import { api, maybeSignedIn } from './api.js';

/** The account and quotas, or null when signed out. */
export async function loadMe() {
  if (!maybeSignedIn()) return null;
  try {
    return await api('GET', '/v1/me', { expect401: true });
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

export async function signIn(email, password) {
  await api('POST', '/v1/session', { body: { email, password }, expect401: true });
  const me = await loadMe();
  // The cookies are Secure: a browser drops them on plain http other than localhost.
  if (!me) throw new Error('Signed in, but the browser did not keep the session cookie.');
  return me;
}

export async function register(email, password) {
  return api('POST', '/v1/auth/register', { body: { email, password }, expect401: true });
}

export async function signOut() {
  await api('DELETE', '/v1/session', { expect401: true }).catch((err) => {
    // Already signed out on the server: the cookies are gone or useless either way.
    if (err.status !== 401) throw err;
  });
}
