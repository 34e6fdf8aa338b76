// Small DOM helpers. User-supplied text only ever goes in as text nodes (never innerHTML).

/** h('div', {class: 'x', onclick: fn, dataset: {a: 1}}, 'text', childNode, [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style' && typeof value === 'object') Object.assign(el.style, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Up to two initials: "Dr Ada Lovelace" -> "AL" (titles skipped), "pat-42" -> "P4". */
export function initials(seed) {
  const text = String(seed || '?').trim();
  const titles = new Set(['dr', 'dr.', 'mr', 'mr.', 'mrs', 'mrs.', 'ms', 'ms.', 'prof', 'prof.']);
  let words = text.split(/[\s_\-.@]+/).filter(Boolean);
  if (words.length > 1) {
    const named = words.filter((w) => !titles.has(w.toLowerCase()));
    if (named.length) words = named;
  }
  if (words.length === 0) return '?';
  if (words.length === 1) return words[0].slice(0, 2).toUpperCase();
  return (words[0][0] + words[words.length - 1][0]).toUpperCase();
}

/** A stable background colour for an avatar seed, dark enough for white initials (4.5:1 at any hue). */
export function avatarColor(seed) {
  let hash = 0;
  for (const ch of String(seed || '')) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 45% 32%)`;
}

export function avatar(seed, extraClass = '') {
  return h('div', { class: `avatar ${extraClass}`, style: { background: avatarColor(seed) }, 'aria-hidden': 'true' }, initials(seed));
}

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const timeFmt = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' });

export function formatDateTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : dateFmt.format(d);
}

export function formatTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : timeFmt.format(d);
}

export function formatDuration(fromIso, toIso) {
  if (!fromIso || !toIso) return '—';
  const secs = Math.max(0, Math.round((new Date(toIso) - new Date(fromIso)) / 1000));
  const m = Math.floor(secs / 60);
  const s = secs % 60;
  return m ? `${m} min ${String(s).padStart(2, '0')} s` : `${s} s`;
}

/** An error box that shows `{code, message}` errors (ApiError / SignalError) or plain text. */
export function errorBox(err, prefix = '') {
  const code = err && err.code ? err.code : null;
  const message = err && err.message ? err.message : String(err);
  return h('div', { class: 'error', role: 'alert' },
    prefix ? h('strong', {}, prefix, ' ') : null,
    message,
    code ? h('code', { class: 'code' }, code) : null);
}

/** Shows (or clears, with null) an error inside a container. */
export function showError(container, err, prefix) {
  clear(container);
  if (err) container.appendChild(errorBox(err, prefix));
}

let toastHost;
/**
 * A short notice at the top of the screen, under the header and any ringing call (never over a
 * control bar or the call dock), read out by screen readers; its × dismisses it at once.
 * kind: 'info' | 'error' | 'ok'.
 */
export function toast(text, kind = 'info', ms = 5000) {
  if (!toastHost) {
    toastHost = document.getElementById('toasts')
      || document.body.appendChild(h('div', { id: 'toasts', class: 'toasts', role: 'status', 'aria-live': 'polite' }));
  }
  const el = h('div', { class: `toast toast-${kind}` },
    h('span', { class: 'toast-text' }, text),
    h('button', { class: 'link toast-close', type: 'button', 'aria-label': 'Dismiss notification', onclick: () => el.remove() }, '×'));
  toastHost.appendChild(el);
  setTimeout(() => el.remove(), ms);
  return el;
}

/** Plays a <video>/<audio>; if autoplay is refused, offers a button that starts it on click. */
export function play(mediaEl, host) {
  const p = mediaEl.play();
  if (!p || !p.catch) return;
  p.catch((err) => {
    if (err && err.name === 'AbortError') return; // replaced by a newer srcObject
    if (!host || host.querySelector('.unmute')) return;
    const btn = h('button', {
      class: 'unmute',
      onclick: () => { mediaEl.play().catch(() => {}); btn.remove(); },
    }, 'Click to start sound and video');
    host.appendChild(btn);
  });
}

/** Human wording for the contract's error codes. */
export function describeCode(code) {
  return {
    busy: 'is busy in another call',
    offline: 'is not online right now',
    forbidden: 'not allowed',
    not_found: 'not found',
    unauthorized: 'your sign-in is no longer valid',
    rate_limited: 'too many requests, slow down',
    unavailable: 'the server is restarting for maintenance, try again in a few minutes',
    invalid_payload: 'invalid request',
    timeout: 'the server did not answer',
  }[code] || code;
}
