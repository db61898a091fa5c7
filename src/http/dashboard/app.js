// Ops-Core dashboard. Plain script, no framework and no build step.
//
// Everything the server sends (agent ids, names, states, details, error
// messages) is untrusted text: it only ever reaches the page through
// textContent or attributes, never parsed as markup.
//
// Live updates come from GET /v1/opscore/events. EventSource cannot send an
// Authorization header, so the stream is read with fetch() and parsed here.
'use strict';

(() => {
  const API = '/v1/opscore';
  const KEY_STORAGE = 'opscore.apiKey';
  const AGENT_PAGE = 500;
  const HISTORY_PAGE = 25;
  const SESSION_PAGE = 10;
  // The server sends a keep-alive comment every 15 s: a stream silent for
  // much longer than that is dead even if the socket has not noticed.
  const STREAM_SILENCE_MS = 40000;
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

  let key = sessionStorage.getItem(KEY_STORAGE);
  // Bumped whenever the dashboard starts over (new key, key forgotten), so
  // that answers to requests of an earlier run are dropped.
  let generation = 0;
  let loaded = false;
  /** agentId -> {data, row, version} */
  const agents = new Map();
  /** The open agent panel, or null. */
  let selected = null;
  const feed = { lastId: null, controller: null };

  // ---------------------------------------------------------------- API

  /** An error answer of the API: its status, `code` and `detail`. */
  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(extra) {
    return Object.assign({ Authorization: 'Bearer ' + key }, extra || {});
  }

  async function errorFrom(resp) {
    let detail = 'HTTP ' + resp.status;
    let code = '';
    try {
      const body = await resp.json();
      if (body && typeof body.detail === 'string') detail = body.detail;
      if (body && typeof body.code === 'string') code = body.code;
    } catch (_) {
      // Not JSON (a proxy's page, say): the status is all there is.
    }
    if (resp.status === 401) unauthorized(detail);
    return new ApiError(resp.status, code, detail);
  }

  async function api(path) {
    const resp = await fetch(API + path, {
      headers: authHeaders({ Accept: 'application/json' }),
      cache: 'no-store',
    });
    if (!resp.ok) throw await errorFrom(resp);
    return resp.json();
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------- key form

  function showLogin(message) {
    generation++;
    stopFeed();
    loaded = false;
    ui.app.hidden = true;
    ui.forget.hidden = true;
    ui.login.hidden = false;
    ui.keyError.textContent = message || '';
    ui.keyError.hidden = !message;
    ui.keyInput.value = '';
    ui.keyInput.focus();
    setConn('off', 'offline');
  }

  /** A 401 anywhere: the key is wrong (or was revoked); ask again. */
  function unauthorized(detail) {
    if (key === null) return;
    key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin(detail);
  }

  ui.keyForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = ui.keyInput.value.trim();
    // Header values must be printable ASCII; fetch would throw otherwise.
    if (!/^[\x21-\x7e]+$/.test(value)) {
      ui.keyError.textContent = 'An API key is printable ASCII without spaces.';
      ui.keyError.hidden = false;
      return;
    }
    key = value;
    sessionStorage.setItem(KEY_STORAGE, key);
    start();
  });

  ui.forget.addEventListener('click', () => {
    key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin('');
  });

  // ------------------------------------------------------------- start

  function start() {
    generation++;
    ui.login.hidden = true;
    ui.app.hidden = false;
    ui.forget.hidden = false;
    showAppError('');
    closeDetail();
    agents.clear();
    ui.agentsBody.replaceChildren();
    loaded = false;
    ui.count.textContent = 'Loading…';
    feed.lastId = null;
    runFeed(generation);
  }

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
    if (selected && !agents.has(selected.id)) {
      ui.detailNote.textContent = 'This agent is no longer registered.';
    }
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
        await readEvents(resp.body, controller, gen);
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

  async function readEvents(body, controller, gen) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser((ev) => {
      if (gen === generation) onEvent(ev);
    });
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
    };
    arm();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || gen !== generation) return;
        arm();
        parser.push(decoder.decode(value, { stream: true }));
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  /** A Server-Sent Events parser (the WHATWG event-stream format). */
  class SseParser {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.buf = '';
      this.id = null;
      this.event = '';
      this.data = [];
    }

    push(text) {
      const buf = this.buf + text;
      let start = 0;
      for (let i = 0; i < buf.length; i++) {
        const c = buf[i];
        if (c !== '\n' && c !== '\r') continue;
        // A CR at the very end may be the first half of a CRLF.
        if (c === '\r' && i + 1 === buf.length) break;
        this.line(buf.slice(start, i));
        if (c === '\r' && buf[i + 1] === '\n') i++;
        start = i + 1;
      }
      this.buf = buf.slice(start);
    }

    line(l) {
      if (l === '') {
        if (this.data.length) {
          this.onEvent({ id: this.id, event: this.event || 'message', data: this.data.join('\n') });
        }
        this.data = [];
        this.event = '';
        return;
      }
      if (l[0] === ':') return; // a comment: the server's keep-alive
      const colon = l.indexOf(':');
      const field = colon < 0 ? l : l.slice(0, colon);
      let value = colon < 0 ? '' : l.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
      else if (field === 'id' && !value.includes('\0')) this.id = value;
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
        if (selected && selected.id === id) {
          ui.historyBody.prepend(historyRow({
            state: d.state,
            timestamp: d.timestamp,
            receivedAt: msg.at,
            details: d.details,
          }));
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
        if (selected && selected.id === id && msg.sessionId) {
          sessionEvent(kind, msg.sessionId, d);
        }
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
    if (selected && selected.id === id) {
      ui.detailNote.textContent = 'This agent has been deregistered.';
    }
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

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function cell(label, cls, ...children) {
    const td = el('td', cls);
    td.dataset.label = label;
    td.append(...children);
    return td;
  }

  /** The badge class of a state: the four colours the page knows. */
  function stateClass(state) {
    return ['idle', 'active', 'error'].includes(state) ? 's-' + state : 's-other';
  }

  function badge(state, stale) {
    const b = el('span', 'badge ' + stateClass(state) + (stale ? ' is-stale' : ''), state || '?');
    b.dataset.state = state || '';
    if (stale) b.title = 'Last known state: the agent is stale';
    return b;
  }

  function renderRow(entry) {
    const a = entry.data;
    const state = (a.currentState && a.currentState.state) || 'UNKNOWN';
    const row = entry.row;
    row.classList.toggle('stale', !!a.stale);
    row.classList.toggle('selected', !!selected && selected.id === a.agentId);
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

  ui.agentsBody.addEventListener('click', (ev) => {
    const row = ev.target.closest('tr');
    if (row && row.dataset.agentId !== undefined) openDetail(row.dataset.agentId);
  });
  ui.agentsBody.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Enter' && ev.key !== ' ') return;
    const row = ev.target.closest('tr');
    if (row && row.dataset.agentId !== undefined) {
      ev.preventDefault();
      openDetail(row.dataset.agentId);
    }
  });

  // ------------------------------------------------------------ times

  /** Parse the server's RFC 3339 times (microseconds) as a Date. */
  function parseTime(iso) {
    if (typeof iso !== 'string') return null;
    const t = Date.parse(iso.replace(/(\.\d{3})\d+/, '$1'));
    return Number.isNaN(t) ? null : new Date(t);
  }

  function ago(iso) {
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
  function timeEl(iso, cls) {
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

  function fullTime(iso) {
    const t = parseTime(iso);
    return t ? t.toLocaleString() : iso || '';
  }

  // Relative times move on without any event.
  setInterval(() => {
    for (const e of agents.values()) {
      const t = e.row.querySelector('time.last-seen');
      if (!t) continue;
      const text = ago(e.data.lastSeen);
      if (t.textContent !== text) t.textContent = text;
    }
  }, 1000);

  // ------------------------------------------------------ agent panel

  function closeDetail() {
    selected = null;
    ui.detail.hidden = true;
    ui.app.classList.remove('with-detail');
    for (const e of agents.values()) e.row.classList.remove('selected');
  }

  ui.detailClose.addEventListener('click', closeDetail);

  function openDetail(id) {
    selected = { id, token: {}, historyCursor: null, sessionsCursor: null, sessions: new Map() };
    for (const e of agents.values()) e.row.classList.toggle('selected', e.data.agentId === id);
    ui.detail.hidden = false;
    ui.app.classList.add('with-detail');
    ui.detailTitle.textContent = id;
    const a = agents.get(id);
    ui.detailNote.textContent = a
      ? [a.data.agentName, a.data.version && 'v' + a.data.version, a.data.contactEndpoint]
          .filter(Boolean)
          .join(' · ')
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
      el('span', 'session-id mono', s.sessionId),
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

  function sessionEvent(kind, sessionId, d) {
    const sel = selected;
    let entry = sel.sessions.get(sessionId);
    if (entry && kind === 'session.status') {
      entry.data.status = d.status;
      entry.data.error = d.error;
      renderSession(entry);
      return;
    }
    if (entry && Array.isArray(entry.data.tasks)) {
      const run = entry.data.tasks.find((r) => r.runId === d.runId);
      if (run) {
        run.status = d.status;
        run.attempts = d.attempt;
        run.lastError = d.error;
        renderSession(entry);
        return;
      }
    }
    // A session or run this panel has not seen yet: read it whole.
    if (!entry) entry = addSession(sel, { sessionId, workflowId: d.workflowId || '', status: d.status || 'started' }, true);
    refreshSession(sel, entry);
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

  // ------------------------------------------------------------- boot

  if (key) start();
  else showLogin('');
})();
