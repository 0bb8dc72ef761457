// Turning API values into words and units people read.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(n) {
  if (!Number.isFinite(n) || n < 0) return '–';
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${UNITS[i]}`;
}

/** m:ss, or h:mm:ss from an hour on. */
export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '–';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** A wait in words: "42 s", "3 min 5 s". */
export function wait(seconds) {
  if (!Number.isFinite(seconds)) return 'a moment';
  const s = Math.max(1, Math.ceil(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

export function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : dateFormat.format(d);
}

export const STATES = ['queued', 'converting', 'converted', 'failed', 'expired'];

const STATE_WORDS = {
  queued: 'Waiting to convert',
  converting: 'Converting',
  converted: 'Converted',
  failed: 'Failed',
  expired: 'Expired',
};

export function stateWords(state) {
  return STATE_WORDS[state] ?? state;
}

export function percent(fraction) {
  return `${Math.floor(Math.min(1, Math.max(0, fraction || 0)) * 100)} %`;
}

/** The name a converted file downloads as: the original's with .mp3. */
export function mp3Name(filename) {
  const base = (filename || 'track').replace(/\.[^./\\]*$/, '');
  return `${base || 'track'}.mp3`;
}

/** The file name in a Content-Disposition header (RFC 6266: filename* wins over filename). */
export function dispositionName(header) {
  if (!header) return null;
  const star = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(header);
  if (star) {
    try {
      return decodeURIComponent(star[2].trim().replace(/^"|"$/g, ''));
    } catch {
      // fall through to the plain form
    }
  }
  const plain = /filename\s*=\s*("((?:[^"\\]|\\.)*)"|[^;]+)/i.exec(header);
  if (!plain) return null;
  return plain[2] !== undefined ? plain[2].replace(/\\(.)/g, '$1') : plain[1].trim();
}

/** A bitrate in kb/s; the API may give bits or kilobits per second. */
export function kbps(bitrate) {
  return `${Math.round(bitrate >= 1000 ? bitrate / 1000 : bitrate)} kb/s`;
}
