// The Sessions view: every session of the fleet (GET /sessions) with
// filters and counts by status, and a session's own page (#/sessions/{id})
// with its tasks as a timeline and a graph of their dependencies. app.js
// routes here and hands over the feed's session and task events.

import { api, apiPost, enc, ApiError } from './api.js';
import { el, cell, timeEl, parseTime } from './dom.js';

const PAGE = 50;
const STATUSES = ['started', 'running', 'completed', 'failed', 'cancelled'];
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const ui = {
  fleet: $('fleet'),
  status: $('f-status'),
  workflow: $('f-workflow'),
  agent: $('f-agent'),
  counts: $('counts'),
  fleetError: $('fleet-error'),
  body: document.querySelector('#fleet-table tbody'),
  empty: $('fleet-empty'),
  more: $('fleet-more'),
  page: $('session-page'),
  title: $('sp-title'),
  facts: $('sp-facts'),
  error: $('sp-error'),
  actions: $('sp-actions'),
  retry: $('sp-retry'),
  cancel: $('sp-cancel'),
  trigger: $('sp-trigger'),
  timeline: $('sp-timeline'),
  graph: $('sp-graph'),
};

/**
 * What the key may do, learned from the API itself: `operate` when it may
 * list sessions across the fleet (admin and operator keys, the roles that
 * may also trigger, cancel and run sessions again). Null until known.
 */
export const access = { operate: null };

/** Ask the API what this key may do (GET /sessions/counts answers 403 otherwise). */
export async function probe() {
  try {
    await api('/sessions/counts');
    access.operate = true;
  } catch (e) {
    access.operate = e instanceof ApiError && (e.status === 403 || e.status === 404) ? false : null;
  }
  return access.operate;
}

// ------------------------------------------------------- fleet list

/** The listing on show: its filters, cursor, and a counter to drop late answers. */
const list = { cursor: null, seq: 0, reload: null };

function filterQuery() {
  const q = [];
  if (ui.status.value) q.push('status=' + enc(ui.status.value));
  const wf = ui.workflow.value.trim();
  if (wf) q.push('workflowId=' + enc(wf));
  const ag = ui.agent.value.trim();
  if (ag) q.push('agentId=' + enc(ag));
  return q;
}

/** Show the fleet list (and hide the session page), reading it afresh. */
export function showFleet() {
  ui.page.hidden = true;
  ui.fleet.hidden = false;
  loadFleet(true);
}

/** Hide both views of this module. */
export function hide() {
  ui.fleet.hidden = true;
  ui.page.hidden = true;
  page.id = null;
}

function fleetError(message) {
  ui.fleetError.textContent = message;
  ui.fleetError.hidden = !message;
}

async function loadFleet(fresh) {
  const seq = ++list.seq;
  const q = filterQuery();
  const countsQuery = q.filter((p) => !p.startsWith('status='));
  if (!fresh && list.cursor) q.push('cursor=' + enc(list.cursor));
  q.push('limit=' + PAGE);
  try {
    const [pageData, counts] = await Promise.all([
      api('/sessions?' + q.join('&')),
      fresh ? api('/sessions/counts' + (countsQuery.length ? '?' + countsQuery.join('&') : '')) : null,
    ]);
    if (seq !== list.seq) return;
    if (fresh) {
      ui.body.replaceChildren();
      renderCounts(counts);
    }
    for (const s of pageData.items) ui.body.appendChild(fleetRow(s));
    list.cursor = pageData.nextCursor;
    ui.more.hidden = !pageData.nextCursor;
    ui.empty.hidden = ui.body.children.length !== 0;
    fleetError('');
  } catch (e) {
    if (seq !== list.seq || (e instanceof ApiError && e.status === 401)) return;
    fleetError(e.message);
  }
}

function renderCounts(c) {
  const items = STATUSES.map((s) => {
    const li = el('li', 'count st-' + s);
    li.dataset.status = s;
    li.append(el('span', 'n', c && Number.isFinite(c[s]) ? c[s] : 0), ' ', el('span', '', s));
    li.tabIndex = 0;
    li.title = 'Show only ' + s + ' sessions';
    return li;
  });
  const total = el('li', 'count total');
  total.dataset.status = '';
  total.append(el('span', 'n', c && Number.isFinite(c.total) ? c.total : 0), ' ', el('span', '', 'total'));
  total.tabIndex = 0;
  ui.counts.replaceChildren(total, ...items);
}

function status(s) {
  return el('span', 'st st-' + String(s).replace(/[^a-z_]/g, ''), s);
}

function sessionLink(id, cls) {
  const a = el('a', cls || 'mono', id);
  a.href = '#/sessions/' + enc(id);
  return a;
}

function agentLink(id) {
  if (typeof id !== 'string' || !id) return el('span', 'muted', 'pool');
  const a = el('a', 'mono', id);
  a.href = '#/agents/' + enc(id);
  return a;
}

function fleetRow(s) {
  const tr = document.createElement('tr');
  tr.dataset.sessionId = s.sessionId;
  tr.append(
    cell('Session', 'session-id', sessionLink(s.sessionId)),
    cell('Workflow', '', s.workflowId),
    cell('Rev.', 'muted', s.revision === null || s.revision === undefined ? 'inline' : String(s.revision)),
    cell('Agent', '', agentLink(s.agentId)),
    cell('Status', 'status', status(s.status)),
    cell('Created', 'when', timeEl(s.createdAt, '')),
    cell('Error', 'details', s.error || ''),
  );
  return tr;
}

for (const input of [ui.status, ui.workflow, ui.agent]) {
  input.addEventListener(input === ui.status ? 'change' : 'input', () => loadFleet(true));
}
ui.more.addEventListener('click', () => loadFleet(false));
function pickCount(ev) {
  const li = ev.target.closest('li.count');
  if (!li) return;
  ui.status.value = li.dataset.status;
  loadFleet(true);
}
ui.counts.addEventListener('click', pickCount);
ui.counts.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' || ev.key === ' ') {
    ev.preventDefault();
    pickCount(ev);
  }
});

// ------------------------------------------------------ session page

/** The session on show: its id, its last read, a counter to drop late answers. */
const page = { id: null, data: null, seq: 0, refreshing: false, again: false };

/** The id of the session whose page is open, or null. */
export function openSessionId() {
  return page.id;
}

/** Show the page of session `id` (read afresh). */
export function showSession(id) {
  ui.fleet.hidden = true;
  ui.page.hidden = false;
  if (page.id !== id) {
    page.id = id;
    page.data = null;
    ui.title.textContent = id;
    ui.facts.textContent = 'Loading…';
    ui.timeline.replaceChildren();
    ui.graph.replaceChildren();
    ui.actions.hidden = true;
  }
  pageError('');
  refresh();
}

function pageError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

async function refresh() {
  if (page.refreshing) {
    page.again = true;
    return;
  }
  page.refreshing = true;
  try {
    do {
      page.again = false;
      const id = page.id;
      if (id === null) return;
      const s = await api('/sessions/' + enc(id));
      if (page.id !== id) return;
      page.data = s;
      renderPage(s);
    } while (page.again);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) pageError(e.message);
  } finally {
    page.refreshing = false;
  }
}

/** A feed event (`session.status` or `task.status`) about any session. */
export function sessionEvent(sessionId) {
  if (!ui.page.hidden && page.id === sessionId) refresh();
  if (!ui.fleet.hidden && list.reload === null) {
    // Events come in bursts: read the list (and its counts, a scan of the
    // sessions) again a second after the first, at most once a second.
    list.reload = setTimeout(() => {
      list.reload = null;
      if (!ui.fleet.hidden) loadFleet(true);
    }, 1000);
  }
}

function renderPage(s) {
  ui.title.textContent = s.workflowId + ' · ' + s.sessionId;
  const facts = [
    'revision ' + (s.revision === null || s.revision === undefined ? 'inline' : s.revision),
    s.agentId ? 'agent ' + s.agentId : 'pool' + selectorText(s.agentSelector),
    'created ' + (parseTime(s.createdAt) || s.createdAt).toLocaleString(),
  ];
  if (s.finishedAt) facts.push('finished ' + (parseTime(s.finishedAt) || s.finishedAt).toLocaleString());
  ui.facts.replaceChildren(status(s.status), ' · ' + facts.join(' · '));
  ui.facts.dataset.status = s.status;
  if (s.error) pageError(s.error);
  else pageError('');
  renderActions(s);
  renderTimeline(s);
  renderGraph(s);
}

/** A pool trigger's selector, when the server sends one. */
function selectorText(sel) {
  if (!sel || typeof sel !== 'object') return '';
  const parts = [];
  if (typeof sel.capability === 'string') parts.push('capability ' + sel.capability);
  if (Array.isArray(sel.agentIds) && sel.agentIds.length) parts.push('agents ' + sel.agentIds.join(', '));
  return parts.length ? ' (' + parts.join('; ') + ')' : '';
}

function renderActions(s) {
  const may = access.operate === true;
  ui.retry.hidden = !(may && (s.status === 'failed' || s.status === 'cancelled'));
  ui.cancel.hidden = !(may && (s.status === 'started' || s.status === 'running'));
  // A new session of the same stored definition on the same agent.
  ui.trigger.hidden = !(may && typeof s.agentId === 'string' && s.revision !== null && s.revision !== undefined);
  ui.actions.hidden = ui.retry.hidden && ui.cancel.hidden && ui.trigger.hidden;
}

async function act(button, run) {
  button.disabled = true;
  try {
    await run();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) pageError(e.message);
    if (e instanceof ApiError && e.status === 403) access.operate = false;
  } finally {
    button.disabled = false;
  }
}

ui.retry.addEventListener('click', () => act(ui.retry, async () => {
  const s = await apiPost('/sessions/' + enc(page.id) + '/retry');
  if (page.id === s.sessionId) {
    page.data = s;
    renderPage(s);
  }
}));
ui.cancel.addEventListener('click', () => act(ui.cancel, async () => {
  const s = await apiPost('/sessions/' + enc(page.id) + '/cancel');
  if (page.id === s.sessionId) {
    page.data = s;
    renderPage(s);
  }
}));
ui.trigger.addEventListener('click', () => act(ui.trigger, async () => {
  const s = page.data;
  const t = await apiPost('/agent/' + enc(s.agentId) + '/workflow', { workflowDefinitionId: s.workflowId });
  location.hash = '#/sessions/' + enc(t.sessionId);
}));

/** Milliseconds between two of the server's times, or null. */
function span(from, to) {
  const a = parseTime(from);
  const b = parseTime(to);
  return a && b ? Math.max(0, b.getTime() - a.getTime()) : null;
}

function duration(ms) {
  if (ms === null) return '';
  if (ms < 1000) return ms + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
  return Math.floor(ms / 60000) + ' min ' + Math.round((ms % 60000) / 1000) + ' s';
}

function renderTimeline(s) {
  const tasks = Array.isArray(s.tasks) ? s.tasks : [];
  const start = parseTime(s.createdAt);
  const ends = tasks.map((r) => parseTime(r.finishedAt) || new Date()).concat([parseTime(s.finishedAt) || new Date()]);
  const end = Math.max(...ends.map((d) => d.getTime()));
  const total = start ? Math.max(1, end - start.getTime()) : 1;
  const at = (iso) => {
    const t = parseTime(iso);
    return start && t ? ((t.getTime() - start.getTime()) / total) * 100 : null;
  };
  const items = tasks.map((r) => {
    const li = el('li', 'task');
    li.dataset.runId = r.runId;
    li.dataset.taskId = r.taskId;
    const head = el('div', 'task-head');
    const tries = r.attempts + '/' + (Number(r.maxRetries) + 1);
    head.append(
      el('strong', 'mono', r.taskId),
      r.name && r.name !== r.taskId ? el('span', 'muted', r.name) : '',
      status(r.status),
      el('span', 'muted attempts', 'attempt ' + tries),
      agentLink(r.agentId !== undefined ? r.agentId : s.agentId),
    );
    if (r.waitingFor) head.append(el('span', 'waiting', 'waiting: ' + r.waitingFor));
    li.append(head);
    // The bar: created → sent → started → finished, on the session's scale.
    const bar = el('div', 'bar');
    const from = at(r.dispatchedAt) ?? at(r.startedAt) ?? null;
    const to = r.finishedAt ? at(r.finishedAt) : 100;
    if (from !== null) {
      const fill = el('div', 'fill st-bg-' + String(r.status).replace(/[^a-z_]/g, ''));
      fill.style.left = from.toFixed(2) + '%';
      fill.style.width = Math.max(0.5, (to ?? 100) - from).toFixed(2) + '%';
      bar.append(fill);
    }
    li.append(bar);
    const times = [];
    const wait = span(s.createdAt, r.dispatchedAt);
    if (r.dispatchedAt) times.push('sent ' + duration(wait) + ' in');
    if (r.startedAt) times.push('started after ' + duration(span(r.dispatchedAt, r.startedAt)));
    if (r.finishedAt) times.push('took ' + duration(span(r.startedAt || r.dispatchedAt, r.finishedAt)));
    if (times.length) li.append(el('div', 'muted times', times.join(' · ')));
    if (r.lastError) li.append(el('div', 'last-error', r.lastError));
    const out = r.output !== undefined && r.output !== null ? r.output : r.result;
    if (out !== undefined && out !== null) {
      const code = el('code', 'output', JSON.stringify(out));
      li.append(el('div', 'muted', r.output !== undefined && r.output !== null ? 'output' : 'result'), code);
    }
    return li;
  });
  ui.timeline.replaceChildren(...items);
  if (!items.length) ui.timeline.append(el('li', 'muted', 'No tasks.'));
}

/**
 * Each task's dependencies: `dependsOn` when the server sends it, else the
 * order the runs were made in (a chain, one after the other).
 */
function edges(tasks) {
  const ids = [...new Set(tasks.map((r) => r.taskId))];
  const deps = new Map(ids.map((id) => [id, []]));
  const declared = tasks.some((r) => Array.isArray(r.dependsOn) && r.dependsOn.length);
  if (declared) {
    for (const r of tasks) {
      for (const d of r.dependsOn || []) if (deps.has(d) && !deps.get(r.taskId).includes(d)) deps.get(r.taskId).push(d);
    }
  } else {
    for (let i = 1; i < ids.length; i++) deps.get(ids[i]).push(ids[i - 1]);
  }
  return { ids, deps };
}

function renderGraph(s) {
  const tasks = Array.isArray(s.tasks) ? s.tasks : [];
  const { ids, deps } = edges(tasks);
  // The latest run of each task gives its colour.
  const latest = new Map();
  for (const r of tasks) latest.set(r.taskId, r);
  // Depth: the longest way from a start task (cycles cannot be stored).
  const depth = new Map();
  const depthOf = (id, seen) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...deps.get(id).map((p) => depthOf(p, seen))) + 1;
    depth.set(id, d);
    return d;
  };
  ids.forEach((id) => depthOf(id, new Set()));
  const columns = [];
  for (const id of ids) {
    const d = depth.get(id);
    (columns[d] = columns[d] || []).push(id);
  }
  const W = 150, H = 34, GX = 40, GY = 14;
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((id, y) => pos.set(id, { x: x * (W + GX), y: y * (H + GY) })));
  const width = Math.max(1, columns.length) * (W + GX) - GX;
  const height = Math.max(1, ...columns.map((c) => c.length)) * (H + GY) - GY;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 ' + Math.max(width, 1) + ' ' + Math.max(height, 1));
  svg.setAttribute('width', String(Math.max(width, 1)));
  svg.setAttribute('height', String(Math.max(height, 1)));
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'Task dependencies');
  for (const id of ids) {
    for (const d of deps.get(id)) {
      const a = pos.get(d);
      const b = pos.get(id);
      const line = document.createElementNS(SVG, 'line');
      line.setAttribute('x1', String(a.x + W));
      line.setAttribute('y1', String(a.y + H / 2));
      line.setAttribute('x2', String(b.x));
      line.setAttribute('y2', String(b.y + H / 2));
      line.setAttribute('class', 'edge');
      line.dataset.from = d;
      line.dataset.to = id;
      svg.append(line);
    }
  }
  for (const id of ids) {
    const p = pos.get(id);
    const r = latest.get(id);
    const g = document.createElementNS(SVG, 'g');
    g.setAttribute('class', 'node st-bg-' + String(r ? r.status : '').replace(/[^a-z_]/g, ''));
    g.dataset.taskId = id;
    const rect = document.createElementNS(SVG, 'rect');
    for (const [k, v] of [['x', p.x], ['y', p.y], ['width', W], ['height', H], ['rx', 6]]) rect.setAttribute(k, String(v));
    const text = document.createElementNS(SVG, 'text');
    text.setAttribute('x', String(p.x + 8));
    text.setAttribute('y', String(p.y + H / 2 + 4));
    text.textContent = id.length > 18 ? id.slice(0, 17) + '…' : id;
    const title = document.createElementNS(SVG, 'title');
    title.textContent = id + (r ? ': ' + r.status : '');
    g.append(rect, text, title);
    svg.append(g);
  }
  ui.graph.replaceChildren(svg);
}
