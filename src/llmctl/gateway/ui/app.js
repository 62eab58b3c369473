// llmctl dashboard (issue 21). No framework, no build step: this file is served as it is.
//
// Rules this file keeps:
// - Text from the server reaches the page through textContent only (the page's CSP requires Trusted Types,
//   so an innerHTML assignment would throw anyway). Log lines show control characters as escapes (\x1b).
// - The API key, when the gateway asks for one (401), is typed once, kept in sessionStorage (this tab only)
//   and sent as `Authorization: Bearer`, never in a URL.
// - EventSource cannot send that header, so the event stream is read with fetch() and a stream reader;
//   `event:` / `data:` lines are parsed here (html.spec.whatwg.org/multipage/server-sent-events.html).
'use strict';

const KEY_STORE = 'llmctl.apiKey';
const MAX_ACTIVITY_ROWS = 200;
const LOG_LINES = 200;
const LOG_REFRESH_MS = 2000;
const STREAM_SILENCE_MS = 40000; // the server pings every 15 s: this long without a byte, reconnect
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MOST_MS = 15000;
const COLOURS = ['#0969da', '#cf222e', '#1a7f37', '#9a6700', '#8250df', '#bf3989', '#0a7b83', '#6e7781'];

const $ = (id) => document.getElementById(id);

// -- small helpers ---------------------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function hex(value, width) {
  return value.toString(16).padStart(width, '0');
}

// A log line as a terminal shows it (llmctl.cli.render.visible): control and other unprintable characters as
// escapes, bytes that were not UTF-8 (sent as lone surrogates U+DC80..U+DCFF, Python's surrogateescape) as \xNN.
function visible(text) {
  let out = '';
  for (const ch of text) {
    if (ch === ' ' || ch === '\t' || !/[\p{C}\p{Z}]/u.test(ch)) {
      out += ch;
      continue;
    }
    const code = ch.codePointAt(0);
    if (code >= 0xdc80 && code <= 0xdcff) out += '\\x' + hex(code - 0xdc00, 2);
    else if (code === 10) out += '\\n';
    else if (code === 13) out += '\\r';
    else if (code < 0x100) out += '\\x' + hex(code, 2);
    else if (code < 0x10000) out += '\\u' + hex(code, 4);
    else out += '\\U' + hex(code, 8);
  }
  return out;
}

function bytes(value) {
  // Binary units, as `llmctl status` and `doctor` print them (llmctl.memory.budget.format_bytes).
  if (value === null || value === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let size = value;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(size) : size.toFixed(size < 10 ? 2 : 1)) + ' ' + units[unit];
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  let left = Math.max(0, Math.floor(seconds));
  const days = Math.floor(left / 86400);
  left -= days * 86400;
  const hours = Math.floor(left / 3600);
  left -= hours * 3600;
  const minutes = Math.floor(left / 60);
  const secs = left - minutes * 60;
  if (days) return `${days}d ${hours}h`;
  if (hours) return `${hours}h ${minutes}m`;
  if (minutes) return `${minutes}m ${secs}s`;
  return `${secs}s`;
}

function number(value, digits) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '–';
}

function clock(epochSeconds) {
  const at = new Date(epochSeconds * 1000);
  return at.toLocaleTimeString([], {hour12: false});
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// -- the API key -----------------------------------------------------------------------------------------------

class KeyNeeded extends Error {}

const keyState = {waiting: [], asked: false, refused: false};

// What the gateway takes as a key (llmctl.gateway.edges.api_key_from): visible ASCII, no spaces. fetch() throws
// on a header value outside ISO-8859-1, so a key the gateway could never accept must not reach a request.
const KEY_SHAPE = /^[\x21-\x7e]+$/;

function currentKey() {
  const key = sessionStorage.getItem(KEY_STORE);
  if (key !== null && !KEY_SHAPE.test(key)) {
    sessionStorage.removeItem(KEY_STORE); // planted or left by an older page: ask again rather than loop
    return null;
  }
  return key;
}

function authHeaders(key) {
  return key ? {Authorization: 'Bearer ' + key} : {};
}

// A 401 to a request sent with `sentKey` (null: none). Show the field; whoever needs the key awaits keyGiven().
// Several requests may be refused at once: a refused key is forgotten only if it is still the one kept.
function askForKey(sentKey) {
  if (sentKey) {
    keyState.refused = true;
    if (currentKey() === sentKey) sessionStorage.removeItem(KEY_STORE);
  }
  keyState.asked = true;
  const form = $('key-form');
  $('key-note').textContent = keyState.refused
    ? 'that key was refused; kept in this tab\'s session storage only'
    : 'kept in this tab\'s session storage only';
  if (form.hidden) {
    form.hidden = false;
    $('key-input').focus();
  }
  setConnection('key', 'API key needed');
}

function keyGiven() {
  if (!keyState.asked) return Promise.resolve();
  return new Promise((resolve) => keyState.waiting.push(resolve));
}

function onKeySubmit(event) {
  event.preventDefault();
  const key = $('key-input').value.trim();
  if (!key) return;
  if (!KEY_SHAPE.test(key)) {
    $('key-note').textContent = 'an API key is visible ASCII characters only (no spaces or accents): check it';
    return;
  }
  sessionStorage.setItem(KEY_STORE, key);
  keyState.refused = false;
  $('key-input').value = '';
  $('key-form').hidden = true;
  keyState.asked = false;
  const waiting = keyState.waiting.splice(0);
  waiting.forEach((resolve) => resolve());
  loadActivity();
}

async function api(path, options = {}) {
  const key = currentKey();
  const headers = {...(options.headers || {}), ...authHeaders(key)};
  const response = await fetch(path, {...options, headers, cache: 'no-store', credentials: 'same-origin'});
  if (response.status === 401) {
    askForKey(key);
    throw new KeyNeeded('API key needed');
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch (error) {
    // not JSON: the status says enough
  }
  return `HTTP ${response.status}`;
}

// -- banners and the connection badge ---------------------------------------------------------------------------

function setConnection(state, text) {
  const badge = $('connection');
  badge.dataset.state = state;
  badge.textContent = text;
}

function showBanner(text) {
  const banner = $('banner');
  banner.textContent = text;
  banner.hidden = !text;
}

// -- the status document -----------------------------------------------------------------------------------------

const views = new Map(); // instance name -> its row's elements
let lastStatus = null;
let statusAt = 0; // performance.now() when lastStatus arrived: the clocks tick on from there

function onStatus(doc) {
  if (doc.error) {
    const message = typeof doc.error === 'string' ? doc.error : (doc.error.message || 'unknown error');
    showBanner('No supervisor answers: ' + message);
    $('supervisor').textContent = '';
    return;
  }
  showBanner('');
  lastStatus = doc;
  statusAt = performance.now();
  const sup = doc.supervisor;
  $('supervisor').textContent = sup ? `supervisor pid ${sup.pid}, up ${duration(sup.uptime_s)}` : '';
  renderPools(doc.system);
  renderInstances(doc);
  tick();
}

function budgets(system) {
  const found = new Map();
  for (const pool of (system && system.pools) || []) found.set(pool.pool, pool);
  return found;
}

function bar(label, used, budget) {
  const box = el('div', 'bar');
  box.append(el('div', 'bar-label', label));
  const track = el('div', 'bar-track');
  const fill = el('div', 'bar-fill');
  const share = budget ? used / budget : 0;
  fill.style.width = Math.min(100, Math.max(0, share * 100)).toFixed(1) + '%';
  if (share > 1) fill.classList.add('over');
  track.append(fill);
  box.append(track);
  return box;
}

function renderPools(system) {
  const box = $('pools');
  const cards = [];
  for (const pool of (system && system.pools) || []) {
    const card = el('div', 'pool');
    card.dataset.pool = pool.pool;
    const label = `${pool.pool}: ${bytes(pool.used_bytes)} of ${bytes(pool.budget_bytes)} budget`;
    card.append(bar(label, pool.used_bytes || 0, pool.budget_bytes));
    cards.push(card);
  }
  if (system && system.total_bytes) {
    const card = el('div', 'pool');
    const label = `system: ${bytes(system.used_bytes)} used of ${bytes(system.total_bytes)}`;
    card.append(bar(label, system.used_bytes || 0, system.total_bytes));
    cards.push(card);
  }
  box.replaceChildren(...cards);
}

function instanceView(name) {
  let view = views.get(name);
  if (view) return view;
  const row = el('tr', 'instance');
  row.dataset.instance = name;
  const cells = {};
  for (const key of ['name', 'state', 'reason', 'uptime', 'restarts', 'memory', 'demand', 'actions']) {
    cells[key] = el('td', key);
    row.append(cells[key]);
  }
  cells.restarts.classList.add('num');
  const start = el('button', 'start', 'Start');
  const stop = el('button', 'stop', 'Stop');
  const logs = el('button', 'logs-toggle', 'Logs');
  start.type = stop.type = logs.type = 'button';
  start.addEventListener('click', () => lifecycle(name, 'start', view));
  stop.addEventListener('click', () => lifecycle(name, 'stop', view));
  logs.addEventListener('click', () => toggleLogs(view));
  cells.actions.append(start, stop, logs);
  const logRow = el('tr', 'logs');
  logRow.dataset.instance = name;
  logRow.hidden = true;
  const logCell = el('td');
  logCell.colSpan = 8;
  const pre = el('pre', 'log');
  logCell.append(pre);
  logRow.append(logCell);
  view = {name, row, logRow, pre, cells, start, stop, logs, busy: false, open: false, timer: null, data: null};
  views.set(name, view);
  return view;
}

function renderInstances(doc) {
  const body = $('instance-rows');
  const pools = budgets(doc.system);
  const order = [];
  for (const instance of doc.instances || []) {
    const view = instanceView(instance.name);
    view.data = instance;
    fillInstance(view, instance, pools);
    order.push(view.row, view.logRow);
  }
  for (const [name, view] of views) {
    if (!(doc.instances || []).some((instance) => instance.name === name)) {
      clearInterval(view.timer);
      views.delete(name);
    }
  }
  body.replaceChildren(...order);
  $('no-instances').hidden = order.length > 0;
}

function fillInstance(view, instance, pools) {
  const {cells} = view;
  cells.name.replaceChildren(el('span', 'name', instance.name));
  const what = [instance.backend, instance.model ? String(instance.model).split('/').pop() : null];
  cells.name.append(el('span', 'sub', what.filter(Boolean).join(' · ')));
  const aliases = Array.isArray(instance.aliases) ? instance.aliases.filter((a) => typeof a === 'string') : [];
  if (aliases.length) cells.name.append(el('span', 'sub aliases', `also: ${aliases.join(', ')}`));
  const state = el('span', 'state', instance.state + (instance.standby ? ' (standby)' : ''));
  state.dataset.state = instance.state;
  state.dataset.outcome = instance.outcome;
  cells.state.replaceChildren(state);
  cells.reason.textContent = instance.reason || '';
  if (instance.progress && instance.progress.phase) {
    cells.reason.append(el('span', 'sub', `${instance.progress.phase}, ${duration(instance.progress.elapsed_s)}`));
  }
  cells.restarts.textContent = String(instance.restarts ?? 0);
  cells.memory.replaceChildren(memoryBars(instance, pools));
  const running = !['stopped', 'failed'].includes(instance.state);
  if (!view.busy) {
    view.start.disabled = instance.state === 'healthy' || instance.state === 'starting';
    view.stop.disabled = !running;
  }
}

function memoryBars(instance, pools) {
  const box = el('div', 'bars');
  const measured = instance.memory_pools;
  if (measured && Object.keys(measured).length) {
    for (const [pool, used] of Object.entries(measured)) {
      const budget = pools.get(pool) ? pools.get(pool).budget_bytes : null;
      const label = budget ? `${pool} ${bytes(used)} of ${bytes(budget)}` : `${pool} ${bytes(used)}`;
      const item = bar(label, used, budget);
      item.dataset.pool = pool;
      box.append(item);
    }
  } else if (instance.memory_bytes) {
    box.append(el('span', null, bytes(instance.memory_bytes)));
  } else if (instance.memory_estimate_bytes) {
    box.append(el('span', 'muted', 'estimate ' + bytes(instance.memory_estimate_bytes)));
  } else {
    box.append(el('span', 'muted', '–'));
  }
  return box;
}

// The clocks (uptime, standby time, idle time, ttl) tick between two status documents.
function tick() {
  if (!lastStatus) return;
  const elapsed = (performance.now() - statusAt) / 1000;
  for (const view of views.values()) {
    const instance = view.data;
    if (!instance) continue;
    const up = instance.uptime_s;
    view.cells.uptime.textContent = up === null || up === undefined ? '–' : duration(up + elapsed);
    view.cells.demand.textContent = demandText(instance, elapsed);
  }
}

function demandText(instance, elapsed) {
  if (instance.standby) return `standby ${duration((instance.state_since_s || 0) + elapsed)}`;
  const parts = [];
  if (typeof instance.idle_s === 'number') parts.push(`idle ${duration(instance.idle_s + elapsed)}`);
  if (typeof instance.ttl_left_s === 'number') parts.push(`stops in ${duration(instance.ttl_left_s - elapsed)}`);
  return parts.length ? parts.join(' · ') : '–';
}

async function lifecycle(name, action, view) {
  view.busy = true;
  view.start.disabled = view.stop.disabled = true;
  const button = action === 'start' ? view.start : view.stop;
  button.textContent = action === 'start' ? 'Starting…' : 'Stopping…';
  try {
    const response = await api(`/llmctl/v1/instances/${encodeURIComponent(name)}/${action}`, {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: '{}',
    });
    if (!response.ok) showBanner(`${action} ${name}: ${await errorText(response)}`);
  } catch (error) {
    if (!(error instanceof KeyNeeded)) showBanner(`${action} ${name}: ${error.message}`);
  } finally {
    view.busy = false;
    view.start.textContent = 'Start';
    view.stop.textContent = 'Stop';
    if (view.data) fillInstance(view, view.data, budgets(lastStatus && lastStatus.system));
  }
}

// -- log tails -------------------------------------------------------------------------------------------------

function toggleLogs(view) {
  view.open = !view.open;
  view.logRow.hidden = !view.open;
  view.logs.textContent = view.open ? 'Hide logs' : 'Logs';
  clearInterval(view.timer);
  view.timer = null;
  if (view.open) {
    loadLogs(view);
    view.timer = setInterval(() => loadLogs(view), LOG_REFRESH_MS);
  }
}

async function loadLogs(view) {
  try {
    const response = await api(`/llmctl/v1/instances/${encodeURIComponent(view.name)}/logs?n=${LOG_LINES}`);
    if (!response.ok) {
      view.pre.textContent = await errorText(response);
      return;
    }
    const doc = await response.json();
    const pre = view.pre;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const text = doc.lines.length ? doc.lines.map(visible).join('\n') : '(the log is empty)';
    if (pre.textContent !== text) {
      pre.textContent = text;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
  } catch (error) {
    if (!(error instanceof KeyNeeded)) view.pre.textContent = 'could not read the log: ' + error.message;
  }
}

// -- activity --------------------------------------------------------------------------------------------------

const series = new Map(); // instance -> [{t: epoch ms, v: completion tokens/s}]
const seen = new Set(); // rows already shown (the stream and the first load may overlap)

function rowKey(row) {
  return `${row.time}|${row.instance}|${row.path}|${row.duration_ms}`;
}

function addActivity(row) {
  const key = rowKey(row);
  if (seen.has(key)) return;
  seen.add(key);
  if (seen.size > 4 * MAX_ACTIVITY_ROWS) seen.delete(seen.values().next().value); // oldest first: bounded
  const tr = el('tr', 'request');
  tr.dataset.instance = row.instance;
  const tokens = `${row.prompt_tokens ?? '–'} / ${row.completion_tokens ?? '–'}`;
  const cells = [
    ['time', clock(row.time)],
    ['instance', row.instance],
    ['api', row.api],
    ['status', row.status],
    ['ttft num', number(row.ttft_ms, 0)],
    ['tokens num', tokens],
    ['tps num', number(row.completion_tokens_per_s, 1)],
  ];
  for (const [name, text] of cells) tr.append(el('td', name, text));
  const body = $('activity-rows');
  body.prepend(tr);
  while (body.children.length > MAX_ACTIVITY_ROWS) {
    body.lastElementChild.remove();
  }
  $('no-activity').hidden = true;
  if (typeof row.completion_tokens_per_s === 'number' && Number.isFinite(row.completion_tokens_per_s)) {
    if (!series.has(row.instance)) series.set(row.instance, []);
    const points = series.get(row.instance);
    points.push({t: row.time * 1000, v: row.completion_tokens_per_s});
    if (points.length > 500) points.shift();
    drawChart();
  }
}

async function loadActivity() {
  try {
    const response = await api(`/llmctl/v1/activity?n=${MAX_ACTIVITY_ROWS}`);
    if (!response.ok) return;
    const doc = await response.json();
    for (const row of doc.requests) addActivity(row);
  } catch (error) {
    // a 401 asked for the key: the load runs again once it is given
  }
}

// -- the tokens/s chart: a line per instance on a canvas ------------------------------------------------------------

function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function colourOf(instance) {
  const names = [...series.keys()].sort();
  return COLOURS[names.indexOf(instance) % COLOURS.length];
}

function drawChart() {
  const canvas = $('chart');
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 900;
  const height = canvas.clientHeight || 220;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const fg = style.getPropertyValue('--muted').trim() || '#666';
  const grid = style.getPropertyValue('--line').trim() || '#ddd';
  const left = 48, right = 12, top = 10, bottom = 24;
  const plotW = width - left - right, plotH = height - top - bottom;

  const all = [...series.values()].flat();
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = fg;
  if (!all.length) {
    ctx.fillText('no tokens/s yet: requests through the gateway appear here', left, top + plotH / 2);
    renderLegend();
    return;
  }
  const yStep = niceCeiling((Math.max(...all.map((p) => p.v)) * 1.1) / 4);
  const yMax = yStep * 4;
  // The time axis spans the points with a margin, and at least 20 s, centred: a few close requests spread out.
  const first = Math.min(...all.map((p) => p.t));
  const last = Math.max(...all.map((p) => p.t));
  const span = Math.max(last - first, 20000) * 1.1;
  const tMin = (first + last) / 2 - span / 2;
  const tMax = tMin + span;
  const x = (t) => left + ((t - tMin) / (tMax - tMin)) * plotW;
  const y = (v) => top + plotH - (v / yMax) * plotH;

  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i += 1) {
    const value = (yMax * i) / 4;
    const yy = Math.round(y(value)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, yy);
    ctx.lineTo(left + plotW, yy);
    ctx.stroke();
    ctx.fillText(Number.isInteger(value) ? String(value) : value.toFixed(1), left - 6, yy);
  }
  ctx.textBaseline = 'top';
  for (let i = 0; i <= 4; i += 1) {
    const t = tMin + ((tMax - tMin) * i) / 4;
    ctx.textAlign = i === 0 ? 'left' : i === 4 ? 'right' : 'center'; // the ends stay inside the canvas
    ctx.fillText(clock(t / 1000), x(t), top + plotH + 6);
  }

  for (const [instance, points] of series) {
    const colour = colourOf(instance);
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
    ctx.stroke();
    for (const p of points) {
      ctx.beginPath();
      ctx.arc(x(p.t), y(p.v), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  renderLegend();
}

function renderLegend() {
  const items = [];
  for (const instance of [...series.keys()].sort()) {
    const item = el('span', 'legend-item');
    const swatch = el('span', 'swatch');
    swatch.style.background = colourOf(instance);
    const points = series.get(instance);
    item.append(swatch, el('span', null, `${instance} (last ${number(points[points.length - 1].v, 1)} tokens/s)`));
    items.push(item);
  }
  $('legend').replaceChildren(...items);
}

// -- the event stream ------------------------------------------------------------------------------------------

function dispatch(event, data) {
  let payload;
  try {
    payload = JSON.parse(data);
  } catch (error) {
    return; // not ours: ignore it
  }
  if (event === 'status') onStatus(payload);
  else if (event === 'activity') addActivity(payload);
}

async function readEvents(body, controller) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let event = '';
  let data = [];
  let lastByte = Date.now();
  const watchdog = setInterval(() => {
    if (Date.now() - lastByte > STREAM_SILENCE_MS) controller.abort();
  }, 5000);
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      lastByte = Date.now();
      buffer += decoder.decode(value, {stream: true});
      const lines = buffer.split('\n');
      buffer = lines.pop();
      for (const raw of lines) {
        const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
        if (line === '') {
          if (data.length) dispatch(event || 'message', data.join('\n'));
          event = '';
          data = [];
          continue;
        }
        if (line.startsWith(':')) continue; // a comment: the server's ping
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
    }
  } finally {
    clearInterval(watchdog);
  }
}

async function runStream() {
  let backoff = BACKOFF_FIRST_MS;
  for (;;) {
    await keyGiven();
    const controller = new AbortController();
    const key = currentKey();
    let reason = 'disconnected';
    try {
      const response = await fetch('/llmctl/v1/events', {
        headers: {Accept: 'text/event-stream', ...authHeaders(key)},
        cache: 'no-store',
        credentials: 'same-origin',
        signal: controller.signal,
      });
      if (response.status === 401) {
        askForKey(key);
        continue;
      }
      if (!response.ok || !response.body) throw new Error(await errorText(response));
      setConnection('live', 'live');
      backoff = BACKOFF_FIRST_MS;
      await readEvents(response.body, controller);
    } catch (error) {
      reason = error.name === 'AbortError' ? 'stream went silent' : error.message;
    }
    setConnection('down', `reconnecting (${reason})`);
    await sleep(backoff + Math.random() * backoff * 0.3);
    backoff = Math.min(backoff * 2, BACKOFF_MOST_MS);
  }
}

// -- start -----------------------------------------------------------------------------------------------------

function main() {
  $('key-form').addEventListener('submit', onKeySubmit);
  window.addEventListener('resize', drawChart);
  setInterval(tick, 1000);
  drawChart();
  loadActivity();
  runStream();
}

document.addEventListener('DOMContentLoaded', main);
