// Small DOM and formatting helpers. Every piece of server text goes in as
// textContent (or an attribute), never parsed as markup.

/** A new element with a class and text. */
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

/** A table cell; `label` names its column in the phone (card) layout. */
export function cell(label, cls, ...children) {
  const td = el('td', cls);
  td.dataset.label = label;
  td.append(...children);
  return td;
}

/** The badge class of a state: the four colours the page knows. */
export function stateClass(state) {
  return ['idle', 'active', 'error'].includes(state) ? 's-' + state : 's-other';
}

/** A state as a coloured badge; a stale agent's is marked as such. */
export function badge(state, stale) {
  const b = el('span', 'badge ' + stateClass(state) + (stale ? ' is-stale' : ''), state || '?');
  b.dataset.state = state || '';
  if (stale) b.title = 'Last known state: the agent is stale';
  return b;
}

/** Parse the server's RFC 3339 times (microseconds) as a Date. */
export function parseTime(iso) {
  if (typeof iso !== 'string') return null;
  const t = Date.parse(iso.replace(/(\.\d{3})\d+/, '$1'));
  return Number.isNaN(t) ? null : new Date(t);
}

/** How long ago, roughly ("12s ago"). */
export function ago(iso) {
  const t = parseTime(iso);
  if (!t) return iso || '—';
  const s = Math.round((Date.now() - t.getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return s + 's ago';
  if (s < 3600) return Math.floor(s / 60) + 'm ago';
  if (s < 86400) return Math.floor(s / 3600) + 'h ago';
  return Math.floor(s / 86400) + 'd ago';
}

/**
 * A time shown compactly (the time of day when it is today, else date
 * and time), with the server's exact value on hover.
 */
export function timeEl(iso, cls) {
  const t = parseTime(iso);
  const e = el('time', cls);
  e.dateTime = iso || '';
  e.title = iso || '';
  if (!t) {
    e.textContent = iso || '';
  } else if (t.toDateString() === new Date().toDateString()) {
    e.textContent = t.toLocaleTimeString();
  } else {
    e.textContent = t.toLocaleString();
  }
  return e;
}

/** Date and time in the browser's locale. */
export function fullTime(iso) {
  const t = parseTime(iso);
  return t ? t.toLocaleString() : iso || '';
}