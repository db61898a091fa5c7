// Ops-Core dashboard. Plain script, no framework and no build step.
//
// Everything the server sends (agent ids, names, states, details, error
// messages) is untrusted text: it only ever reaches the page through
// textContent or attributes, never parsed as markup.
//
// This module: the key form, the views and their deep links (#/agents,
// #/agents/{id}, #/sessions, #/sessions/{id}), the agents table and the live
// feed that keeps the page current. api.js calls the API, sse.js reads the
// event stream (fetched, since EventSource cannot send an Authorization
// header), panel.js is the agent panel, sessions.js the Sessions view and a
// session's page, dom.js builds elements. ES modules are strict and scoped.

import { API, auth, authHeaders, errorFrom, api, enc, ApiError } from './api.js';
import { readEvents } from './sse.js';
import { el, cell, badge, ago, fullTime } from './dom.js';
import * as panel from './panel.js';
import * as sessions from './sessions.js';

const KEY_STORAGE = 'opscore.apiKey';
const AGENT_PAGE = 500;
const MAX_BACKOFF_MS = 15000;

const $ = (id) => document.getElementById(id);
const ui = {
  login: $('login'),
  keyForm: $('key-form'),
  keyInput: $('key-input'),
  keyError: $('key-error'),
  app: $('app'),
  forget: $('forget'),
  conn: $('conn'),
  filter: $('filter'),
  count: $('count'),
  agentsBody: document.querySelector('#agents tbody'),
  empty: $('empty'),
  appError: $('app-error'),
  views: $('views'),
  navAgents: $('nav-agents'),
  navSessions: $('nav-sessions'),
  agentsPane: document.querySelector('.agents-pane'),
};

// Bumped whenever the dashboard starts over (new key, key forgotten), so
// that answers to requests of an earlier run are dropped.
let generation = 0;
let loaded = false;
/** agentId -> {data, row, version} */
const agents = new Map();
const feed = { lastId: null, controller: null };
/** Set while the page closes the agent panel itself (not the user). */
let keepHash = false;

// ---------------------------------------------------------- key form

function showLogin(message) {
  generation++;
  stopFeed();
  loaded = false;
  ui.app.hidden = true;
  ui.forget.hidden = true;
  ui.views.hidden = true;
  ui.login.hidden = false;
  ui.keyError.textContent = message || '';
  ui.keyError.hidden = !message;
  ui.keyInput.value = '';
  ui.keyInput.focus();
  setConn('off', 'offline');
}

/** A 401 anywhere: the key is wrong (or was revoked); ask again. */
auth.onUnauthorized = (detail) => {
  if (auth.key === null) return;
  auth.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  showLogin(detail);
};

ui.keyForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const value = ui.keyInput.value.trim();
  // Header values must be printable ASCII; fetch would throw otherwise.
  if (!/^[\x21-\x7e]+$/.test(value)) {
    ui.keyError.textContent = 'An API key is printable ASCII without spaces.';
    ui.keyError.hidden = false;
    return;
  }
  auth.key = value;
  sessionStorage.setItem(KEY_STORAGE, value);
  start();
});

ui.forget.addEventListener('click', () => {
  auth.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  showLogin('');
});

// ------------------------------------------------------------- start

function start() {
  generation++;
  stopFeed();
  ui.login.hidden = true;
  ui.app.hidden = false;
  ui.forget.hidden = false;
  ui.views.hidden = false;
  ui.navSessions.hidden = true;
  showAppError('');
  // Starting over is not the user closing the panel: the address (a deep
  // link, or the view before a reload) stays as it is.
  keepHash = true;
  panel.closeDetail();
  keepHash = false;
  agents.clear();
  ui.agentsBody.replaceChildren();
  loaded = false;
  ui.count.textContent = 'Loading…';
  feed.lastId = null;
  runFeed(generation);
  const gen = generation;
  // The Sessions view, and the buttons that change sessions, only for keys
  // whose role may use them: the API itself says (see sessions.probe).
  sessions.probe().then((may) => {
    if (gen !== generation) return;
    ui.navSessions.hidden = may !== true;
    route();
  });
  route();
}

// ------------------------------------------------------------ views

/** Show the view the location's hash names; reloads land on the same one. */
function route() {
  if (ui.app.hidden) return;
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const view = parts[0] || 'agents';
  let id = null;
  try {
    id = parts.length > 1 && parts[1] !== '' ? decodeURIComponent(parts.slice(1).join('/')) : null;
  } catch (_) {
    id = null;
  }
  const onSessions = view === 'sessions';
  ui.agentsPane.hidden = onSessions;
  ui.navAgents.classList.toggle('current', !onSessions);
  ui.navSessions.classList.toggle('current', onSessions);
  if (onSessions) {
    if (panel.openAgentId() !== null) panel.closeDetail();
    if (id === null) sessions.showFleet();
    else sessions.showSession(id);
    return;
  }
  sessions.hide();
  if (id === null) {
    if (panel.openAgentId() !== null) panel.closeDetail();
  } else if (panel.openAgentId() !== id) {
    const entry = agents.get(id);
    panel.openDetail(id, entry ? entry.data : null);
  }
}

window.addEventListener('hashchange', route);

function showAppError(message) {
  ui.appError.textContent = message;
  ui.appError.hidden = !message;
}

/** Every registered agent, following nextCursor. */
async function loadAgents(gen) {
  const all = [];
  let cursor = null;
  do {
    const q = '?limit=' + AGENT_PAGE + (cursor ? '&cursor=' + enc(cursor) : '');
    const page = await api('/agents' + q);
    if (gen !== generation) return;
    all.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  agents.clear();
  ui.agentsBody.replaceChildren();
  for (const a of all) upsert(a.agentId, () => a);
  loaded = true;
  showAppError('');
  updateCount();
  const open = panel.openAgentId();
  if (open !== null && !agents.has(open)) panel.panelNote('This agent is no longer registered.');
}

// -------------------------------------------------------- the feed

function setConn(cls, text) {
  ui.conn.className = 'conn conn-' + cls;
  ui.conn.textContent = text;
}

function stopFeed() {
  if (feed.controller) feed.controller.abort();
  feed.controller = null;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Keep one event stream open for this run of the dashboard. With nothing
 * to resume from (first connection, or the resume point was pruned), the
 * agent list is (re)loaded right after the stream is established: events
 * committed meanwhile wait unread in the response body and are applied on
 * top of the list, so nothing falls between the two.
 */
async function runFeed(gen) {
  let attempt = 0;
  while (gen === generation) {
    const controller = new AbortController();
    feed.controller = controller;
    const resync = feed.lastId === null;
    try {
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (!resync) headers['Last-Event-ID'] = String(feed.lastId);
      const resp = await fetch(API + '/events', {
        headers,
        signal: controller.signal,
        cache: 'no-store',
      });
      if (gen !== generation) return;
      if (resp.status === 410 && !resync) {
        // Too far behind: start from now and reload the list instead.
        feed.lastId = null;
        continue;
      }
      if (!resp.ok) throw await errorFrom(resp);
      if (resync) await loadAgents(gen);
      if (gen !== generation) return;
      setConn('live', 'live');
      attempt = 0;
      await readEvents(resp.body, controller, (ev) => {
        if (gen === generation) onEvent(ev);
      });
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof ApiError && e.status === 401) return;
      if (e instanceof ApiError) showAppError(e.message);
      else if (!loaded) showAppError('Cannot reach the server: ' + e.message);
    }
    if (gen !== generation) return;
    setConn('reconnecting', 'reconnecting…');
    // Exponential backoff with jitter, so a restarted server is not hit
    // by every open dashboard at the same instant.
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** attempt) * (0.75 + Math.random() / 2);
    attempt = Math.min(attempt + 1, 10);
    await sleep(delay);
  }
}

function onEvent(ev) {
  let msg;
  try {
    msg = JSON.parse(ev.data);
  } catch (_) {
    return;
  }
  if (!msg || typeof msg !== 'object') return;
  apply(ev.event, msg);
  const index = Number(ev.id);
  if (ev.id !== null && Number.isSafeInteger(index)) {
    feed.lastId = index;
    ui.conn.title = 'Last event #' + index;
  }
}

function apply(kind, msg) {
  const id = msg.agentId;
  const d = msg.data || {};
  switch (kind) {
    case 'agent.registered': {
      const known = agents.get(id);
      upsert(id, (a) => Object.assign(a || newAgent(id, msg.at), {
        agentName: d.agentName,
        version: d.version,
        capabilities: Array.isArray(d.capabilities) ? d.capabilities : [],
        contactEndpoint: d.contactEndpoint,
        registered: true,
        lastSeen: msg.at,
        stale: false,
      }));
      // Not listed before: new, or registered again after a
      // deregistration with its old state kept. Read it once for that.
      if (!known) refine(id);
      break;
    }
    case 'agent.deregistered':
      remove(id);
      break;
    case 'agent.state':
      if (!agents.has(id)) return;
      upsert(id, (a) => Object.assign(a, {
        currentState: {
          state: d.state,
          details: d.details,
          timestamp: d.timestamp,
          receivedAt: msg.at,
        },
        lastSeen: msg.at,
      }), true);
      if (panel.openAgentId() === id) {
        panel.prependState({ state: d.state, timestamp: d.timestamp, receivedAt: msg.at, details: d.details });
      }
      break;
    case 'agent.stale':
    case 'agent.fresh':
      if (!agents.has(id)) return;
      upsert(id, (a) => Object.assign(a, {
        stale: kind === 'agent.stale',
        lastSeen: d.lastSeen || a.lastSeen,
      }), true);
      break;
    case 'session.status':
    case 'task.status':
      if (panel.openAgentId() === id && msg.sessionId) panel.sessionEvent(kind, msg.sessionId, d);
      if (msg.sessionId) sessions.sessionEvent(msg.sessionId);
      break;
    default:
      break;
  }
}

function newAgent(id, at) {
  return {
    agentId: id,
    agentName: '',
    capabilities: [],
    registered: true,
    lastSeen: at,
    stale: false,
    currentState: { state: 'UNKNOWN', details: null, timestamp: at, receivedAt: at },
  };
}

/**
 * Replace an agent's view with GET /agents/{id}, unless an event changed
 * it meanwhile (then that event is newer than the read: read again).
 */
async function refine(id, tries = 3) {
  const gen = generation;
  const entry = agents.get(id);
  if (!entry) return;
  const version = entry.version;
  try {
    const a = await api('/agent/' + enc(id));
    const now = agents.get(id);
    if (gen !== generation || !now) return;
    if (now.version !== version) {
      if (tries > 1) refine(id, tries - 1);
      return;
    }
    if (a.registered) upsert(id, () => a);
  } catch (_) {
    // The event's own fields stay shown.
  }
}

// ----------------------------------------------------- agents table

function upsert(id, update, flash) {
  if (typeof id !== 'string') return;
  let entry = agents.get(id);
  const data = update(entry ? entry.data : null);
  if (!entry) {
    entry = { data, row: document.createElement('tr'), version: 0 };
    entry.row.dataset.agentId = id;
    entry.row.tabIndex = 0;
    agents.set(id, entry);
    insertSorted(entry.row, id);
  }
  entry.data = data;
  entry.version++;
  renderRow(entry);
  if (flash) {
    entry.row.classList.remove('flash');
    void entry.row.offsetWidth; // restart the animation
    entry.row.classList.add('flash');
  }
  updateCount();
}

function remove(id) {
  const entry = agents.get(id);
  if (entry) {
    entry.row.remove();
    agents.delete(id);
    updateCount();
  }
  if (panel.openAgentId() === id) panel.panelNote('This agent has been deregistered.');
}

/** Keep the listing's order (by agent id). */
function insertSorted(row, id) {
  for (const other of ui.agentsBody.children) {
    if (other.dataset.agentId > id) {
      ui.agentsBody.insertBefore(row, other);
      return;
    }
  }
  ui.agentsBody.appendChild(row);
}

function renderRow(entry) {
  const a = entry.data;
  const state = (a.currentState && a.currentState.state) || 'UNKNOWN';
  const row = entry.row;
  row.classList.toggle('stale', !!a.stale);
  row.classList.toggle('selected', panel.openAgentId() === a.agentId);
  const seen = el('time', 'last-seen', ago(a.lastSeen));
  seen.dateTime = a.lastSeen || '';
  seen.title = fullTime(a.lastSeen);
  const caps = (a.capabilities || []).map((c) => el('span', 'cap', c));
  row.replaceChildren(
    cell('Agent', 'agent-id mono', a.agentId),
    cell('Name', 'name', a.agentName || ''),
    cell('State', 'state', badge(state, a.stale)),
    cell('Last seen', 'seen', seen),
    cell('Stale', 'stale-cell', a.stale ? el('span', 'stale-tag', 'stale') : el('span', 'fresh-tag', 'no')),
    cell('Capabilities', 'caps', ...caps),
  );
  row.hidden = !matches(a);
}

function matches(a) {
  const q = ui.filter.value.trim().toLowerCase();
  if (!q) return true;
  const state = (a.currentState && a.currentState.state) || '';
  const fields = [a.agentId, a.agentName, state, ...(a.capabilities || [])];
  if (a.stale) fields.push('stale');
  return fields.some((f) => typeof f === 'string' && f.toLowerCase().includes(q));
}

function updateCount() {
  if (!loaded) return;
  const total = agents.size;
  let shown = 0;
  for (const e of agents.values()) if (!e.row.hidden) shown++;
  ui.count.textContent = shown === total ? total + ' agents' : shown + ' of ' + total + ' agents';
  ui.empty.hidden = total !== 0;
}

ui.filter.addEventListener('input', () => {
  for (const e of agents.values()) e.row.hidden = !matches(e.data);
  updateCount();
});

function select(id) {
  const entry = agents.get(id);
  panel.openDetail(id, entry ? entry.data : null);
}

panel.hooks.onSelect = (id) => {
  for (const e of agents.values()) e.row.classList.toggle('selected', e.data.agentId === id);
  if (keepHash) return;
  // The open panel is in the address, so a reload or a shared link opens it.
  const want = id === null ? '#/agents' : '#/agents/' + enc(id);
  const onAgents = !location.hash.startsWith('#/sessions');
  if (onAgents && location.hash !== want && (id !== null || location.hash.startsWith('#/agents/'))) {
    location.hash = want;
  }
};

ui.agentsBody.addEventListener('click', (ev) => {
  const row = ev.target.closest('tr');
  if (row && row.dataset.agentId !== undefined) select(row.dataset.agentId);
});
ui.agentsBody.addEventListener('keydown', (ev) => {
  if (ev.key !== 'Enter' && ev.key !== ' ') return;
  const row = ev.target.closest('tr');
  if (row && row.dataset.agentId !== undefined) {
    ev.preventDefault();
    select(row.dataset.agentId);
  }
});

// Relative times move on without any event.
setInterval(() => {
  for (const e of agents.values()) {
    const t = e.row.querySelector('time.last-seen');
    if (!t) continue;
    const text = ago(e.data.lastSeen);
    if (t.textContent !== text) t.textContent = text;
  }
}, 1000);

// ------------------------------------------------------------- boot

auth.key = sessionStorage.getItem(KEY_STORAGE);
if (auth.key) start();
else showLogin('');
