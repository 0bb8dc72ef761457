// Talking to the gateway: JSON in and out, the CSRF header on every request that changes
// something, the API's error body turned into an Error whose message people can read.

import { wait } from './format.js';

const CSRF_COOKIE = 'tunewire_csrf';
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** The CSRF token, read from its cookie at every call: it changes at each sign-in. */
export function csrfToken() {
  for (const part of document.cookie.split(';')) {
    const [name, ...rest] = part.trim().split('=');
    if (name === CSRF_COOKIE) return decodeURIComponent(rest.join('='));
  }
  return '';
}

/** Both cookies are set and cleared together, so without this one we are surely signed out. */
export function maybeSignedIn() {
  return csrfToken() !== '';
}

export class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.code = body?.error ?? 'unknown';
    this.retryAfter = body?.retry_after_s;
  }
}

function describe(status, body) {
  let text = body?.message || fallbackMessage(status);
  if (Number.isFinite(body?.retry_after_s)) text += ` (try again in ${wait(body.retry_after_s)})`;
  return text;
}

function fallbackMessage(status) {
  if (status === 0) return 'The server could not be reached; check your connection and try again.';
  if (status === 401) return 'You are not signed in.';
  if (status === 403) return 'You are not allowed to do that.';
  if (status === 404) return 'Not found.';
  if (status === 413) return 'The file is too large.';
  if (status === 429) return 'Too many requests.';
  if (status >= 500) return 'The server had a problem; try again later.';
  return `The request failed (HTTP ${status}).`;
}

/** Parses an error body (JSON `{error, message, retry_after_s}`), tolerating anything else. */
export function errorFromBody(status, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the generic words for the status
  }
  return new ApiError(status, body && typeof body === 'object' ? body : null);
}

let sessionEnded = () => {};

/** Called with no arguments whenever the API answers 401 to a signed-in request. */
export function onSessionEnded(handler) {
  sessionEnded = handler;
}

export function reportSessionEnded() {
  sessionEnded();
}

/**
 * One API call. `expect401` marks calls where 401 is an answer, not an ended session (sign-in,
 * the start-up check).
 */
export async function api(method, path, { body, headers = {}, expect401 = false } = {}) {
  const h = { Accept: 'application/json', ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const csrf = csrfToken();
  if (!SAFE_METHODS.has(method) && csrf) h['X-CSRF-Token'] = csrf;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: h,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
  } catch {
    throw new ApiError(0, null);
  }
  if (!res.ok) {
    if (res.status === 401 && !expect401) sessionEnded();
    throw errorFromBody(res.status, await res.text().catch(() => ''));
  }
  if (res.status === 204) return null;
  const type = res.headers.get('content-type') || '';
  return type.includes('json') ? res.json() : res.text();
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') q.set(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
