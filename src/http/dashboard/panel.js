// The agent panel: an agent's state history and its sessions with their
// task runs, kept current by the feed events app.js hands over.

import { api, enc, ApiError } from './api.js';
import { el, cell, badge, timeEl } from './dom.js';

const HISTORY_PAGE = 25;
const SESSION_PAGE = 10;

const $ = (id) => document.getElementById(id);
const ui = {
  app: $('app'),
  detail: $('detail'),
  detailTitle: $('detail-title'),
  detailNote: $('detail-note'),
  detailClose: $('detail-close'),
  historyBody: document.querySelector('#history tbody'),
  historyMore: $('history-more'),
  sessions: $('sessions'),
  sessionsEmpty: $('sessions-empty'),
  sessionsMore: $('sessions-more'),
};

/** The open panel, or null. */
let selected = null;

/** Called with the open agent's id (null when closed), to mark its row. */
export const hooks = { onSelect: (_id) => {} };

/** The id of the agent whose panel is open, or null. */
export function openAgentId() {
  return selected ? selected.id : null;
}

/** Replace the line under the title (an error, or a note such as deregistered). */
export function panelNote(text) {
  ui.detailNote.textContent = text;
}

/** Close the panel. */
export function closeDetail() {
  selected = null;
  ui.detail.hidden = true;
  ui.app.classList.remove('with-detail');
  hooks.onSelect(null);
}

ui.detailClose.addEventListener('click', closeDetail);

/** Open the panel of agent `id`; `a` is its listing entry, if known. */
export function openDetail(id, a) {
  selected = { id, historyCursor: null, sessionsCursor: null, sessions: new Map() };
  hooks.onSelect(id);
  ui.detail.hidden = false;
  ui.app.classList.add('with-detail');
  ui.detailTitle.textContent = id;
  ui.detailNote.textContent = a
    ? [a.agentName, a.version && 'v' + a.version, a.contactEndpoint].filter(Boolean).join(' · ')
    : '';
  ui.historyBody.replaceChildren();
  ui.sessions.replaceChildren();
  ui.historyMore.hidden = true;
  ui.sessionsMore.hidden = true;
  ui.sessionsEmpty.hidden = true;
  loadHistory(selected);
  loadSessions(selected);
  if (window.matchMedia('(max-width: 1000px)').matches) {
    ui.detail.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }
}

/** Whether `sel` is still the open panel (answers for another are dropped). */
const current = (sel) => selected === sel;

function panelError(sel, e) {
  if (!current(sel) || (e instanceof ApiError && e.status === 401)) return;
  ui.detailNote.textContent = e.message;
}

async function loadHistory(sel) {
  try {
    const q = '?limit=' + HISTORY_PAGE + (sel.historyCursor ? '&cursor=' + enc(sel.historyCursor) : '');
    const page = await api('/agent/' + enc(sel.id) + '/state/history' + q);
    if (!current(sel)) return;
    for (const h of page.items) ui.historyBody.appendChild(historyRow(h));
    sel.historyCursor = page.nextCursor;
    ui.historyMore.hidden = !page.nextCursor;
  } catch (e) {
    panelError(sel, e);
  }
}

ui.historyMore.addEventListener('click', () => selected && loadHistory(selected));

/** A state that became current for the open agent: on top of its history. */
export function prependState(h) {
  if (selected) ui.historyBody.prepend(historyRow(h));
}

function historyRow(h) {
  const tr = document.createElement('tr');
  const details = h.details === null || h.details === undefined ? '' : JSON.stringify(h.details);
  tr.append(
    cell('State', '', badge(h.state, false)),
    cell('Timestamp', 'when', timeEl(h.timestamp, '')),
    cell('Received', 'when received', timeEl(h.receivedAt, 'muted')),
    cell('Details', 'details', el('code', '', details)),
  );
  return tr;
}

async function loadSessions(sel) {
  try {
    const q = '?limit=' + SESSION_PAGE + (sel.sessionsCursor ? '&cursor=' + enc(sel.sessionsCursor) : '');
    const page = await api('/agent/' + enc(sel.id) + '/sessions' + q);
    if (!current(sel)) return;
    // Each session's task runs come with the session itself.
    const full = await Promise.all(
      page.items.map((s) => api('/sessions/' + enc(s.sessionId)).catch(() => s)),
    );
    if (!current(sel)) return;
    for (const s of full) {
      if (!sel.sessions.has(s.sessionId)) addSession(sel, s, false);
    }
    sel.sessionsCursor = page.nextCursor;
    ui.sessionsMore.hidden = !page.nextCursor;
    ui.sessionsEmpty.hidden = sel.sessions.size !== 0;
  } catch (e) {
    panelError(sel, e);
  }
}

ui.sessionsMore.addEventListener('click', () => selected && loadSessions(selected));

function addSession(sel, s, first) {
  const entry = { data: s, li: el('li', 'session'), refreshing: false };
  entry.li.dataset.sessionId = s.sessionId;
  sel.sessions.set(s.sessionId, entry);
  if (first) ui.sessions.prepend(entry.li);
  else ui.sessions.appendChild(entry.li);
  ui.sessionsEmpty.hidden = true;
  renderSession(entry);
  return entry;
}

/** A link to the session's own page. */
function sessionLink(id) {
  const a = el('a', 'session-id mono', id);
  a.href = '#/sessions/' + enc(id);
  return a;
}

function status(s) {
  return el('span', 'st st-' + String(s).replace(/[^a-z_]/g, ''), s);
}

function renderSession(entry) {
  const s = entry.data;
  const head = el('div', 'session-head');
  head.append(
    el('strong', '', s.workflowId),
    status(s.status),
    timeEl(s.createdAt, 'muted'),
    sessionLink(s.sessionId),
  );
  const parts = [head];
  if (s.error) parts.push(el('div', 'error', s.error));
  if (Array.isArray(s.tasks)) {
    const runs = el('ol', 'runs');
    for (const r of s.tasks) {
      const li = el('li');
      li.dataset.runId = r.runId;
      const tries = r.maxRetries !== undefined ? r.attempts + '/' + (r.maxRetries + 1) : r.attempts;
      li.append(
        el('span', 'mono', r.taskId),
        r.name && r.name !== r.taskId ? el('span', 'muted', ' (' + r.name + ')') : '',
        ' ',
        status(r.status),
        el('span', 'muted', ' · attempt ' + tries),
      );
      if (r.lastError) li.append(el('span', 'muted', ' · ' + r.lastError));
      runs.appendChild(li);
    }
    parts.push(runs);
  }
  entry.li.replaceChildren(...parts);
}

/** A `session.status` or `task.status` event of the open agent. */
export function sessionEvent(kind, sessionId, d) {
  const sel = selected;
  if (!sel) return;
  let entry = sel.sessions.get(sessionId);
  if (entry && kind === 'session.status') {
    entry.data.status = d.status;
    entry.data.error = d.error;
    renderSession(entry);
    readAgainAfterRefresh(entry);
    return;
  }
  if (entry && Array.isArray(entry.data.tasks)) {
    const run = entry.data.tasks.find((r) => r.runId === d.runId);
    if (run) {
      run.status = d.status;
      run.attempts = d.attempt;
      run.lastError = d.error;
      renderSession(entry);
      readAgainAfterRefresh(entry);
      return;
    }
  }
  // A session or run this panel has not seen yet: read it whole.
  if (!entry) entry = addSession(sel, { sessionId, workflowId: d.workflowId || '', status: d.status || 'started' }, true);
  refreshSession(sel, entry);
}

/**
 * A read of the session in flight may have been answered before the event
 * just applied, and would put the older state back when it lands: read
 * again after it. (Every run exists from the trigger on, so no later
 * event of an unknown run comes to set it right.)
 */
function readAgainAfterRefresh(entry) {
  if (entry.refreshing) entry.again = true;
}

async function refreshSession(sel, entry) {
  if (entry.refreshing) {
    entry.again = true;
    return;
  }
  entry.refreshing = true;
  try {
    do {
      entry.again = false;
      const s = await api('/sessions/' + enc(entry.data.sessionId));
      if (!current(sel)) return;
      entry.data = s;
      renderSession(entry);
    } while (entry.again);
  } catch (e) {
    panelError(sel, e);
  } finally {
    entry.refreshing = false;
  }
}
