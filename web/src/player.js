// Playing and downloading a converted MP3. The browser streams it with Range requests, so
// seeking does not fetch the whole file.

import { html } from './html.js';
import { mp3Name } from './format.js';

export function fileUrl(fileId) {
  return `/v1/files/${encodeURIComponent(fileId)}`;
}

/** An audio player; `autoPlay` when the user just asked to play (a click allows it). */
export function Player({ src, name, autoPlay = false }) {
  return html`<audio class="player" controls preload="metadata" src=${src} autoplay=${autoPlay}
    aria-label=${`Player for ${name}`}></audio>`;
}

/** A download link; the server also names the file (Content-Disposition). */
export function DownloadLink({ href, name, label = 'Download' }) {
  return html`<a class="button" href=${href} download=${mp3Name(name)} aria-label=${`${label} ${name}`}>${label}</a>`;
}
