// The time window the graph is coloured by, and the pages of one service (its callers, the
// services it calls, its learned endpoints, its alerts, its namespace's mode) and of one call
// (caller → service: the endpoints used, the verdict counts over time, its alerts). A page is
// named in the address (#service=NS/NAME, #call=CALLER->SERVICE), so it can be linked and
// the browser's Back works; everything is put on the page as text.
import { $, el, getJSON, status } from './dom.js';
import { alertsOf, alertItem, filterBy } from './alerts.js';
import { openModeDialog } from './modes.js';

const WINDOWS = [[900, '15 minutes'], [3600, 'hour'], [6 * 3600, '6 hours'], [86400, '24 hours'], [7 * 86400, '7 days']];
const BARS = 24; // rows of a call's verdicts over time: the window in at most this many steps
let ctx = null; // { state, refresh, onService(id) }

export function windowSeconds() { return Number($('window').value) || 3600; }
function windowName() { return (WINDOWS.find(([s]) => s === windowSeconds()) || [0, 'hour'])[1]; }

function link(text, hash) {
  const a = el('a', text);
  a.href = `#${hash}`;
  return a;
}
const serviceHash = (id) => `service=${encodeURIComponent(id)}`;
const callHash = (id) => `call=${encodeURIComponent(id)}`;

export function serviceLink(id) { return link(id, serviceHash(id)); }
export function callLink(id, text) { return link(text, callHash(id)); }

export function openService(id) { location.hash = serviceHash(id); }
export function openCall(id) { location.hash = callHash(id); }

function verdicts(e) { return `${e.verdicts.allowed} / ${e.verdicts.alerted} / ${e.verdicts.denied}`; }

function table(caption, head, rows) {
  const t = el('table');
  t.append(el('caption', caption));
  const tr = document.createElement('tr');
  for (const h of head) { const th = el('th', h); th.scope = 'col'; tr.append(th); }
  t.createTHead().append(tr);
  const body = t.createTBody();
  for (const cells of rows) {
    const row = document.createElement('tr');
    for (const c of cells) { const td = el('td'); td.append(c); row.append(td); }
    body.append(row);
  }
  if (!rows.length) {
    const row = document.createElement('tr');
    const td = el('td', 'none');
    td.colSpan = head.length;
    row.append(td);
    body.append(row);
  }
  return t;
}

function facts(pairs) {
  const dl = el('dl', undefined, 'facts');
  for (const [k, v] of pairs) {
    const dd = el('dd');
    dd.append(v);
    dl.append(el('dt', k), dd);
  }
  return dl;
}

function button(text, onClick) {
  const b = el('button', text);
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

function alertList(list, label) {
  const ol = el('ol', undefined, 'alert-list');
  ol.setAttribute('aria-label', label);
  ol.append(...list.slice(0, 20).map(alertItem));
  if (!list.length) ol.append(el('li', 'No alerts in the page’s list.'));
  return ol;
}

async function servicePage(id, body) {
  const graph = ctx.state.graph;
  const node = graph.nodes.find((n) => n.id === id) || { id, namespace: id.split('/')[0], mode: '', alerts: 0 };
  const into = graph.edges.filter((e) => e.target === id);
  const out = graph.edges.filter((e) => e.source === id);
  const mode = el('span');
  mode.append(`${node.mode || 'outside meshward'} `);
  if (node.namespace) mode.append(button(`Change the mode of ${node.namespace}…`, () => openModeDialog(node.namespace)));
  const alerts = el('span', `${node.alerts} `);
  alerts.append(button('Show them in Live alerts', () => filterBy(id)));
  body.append(facts([['Namespace', node.namespace || '(none)'], ['Mode', mode], ['Alerts', alerts]]));
  body.append(table(`Callers of ${id} (verdicts in the last ${windowName()})`,
    ['Caller', 'Endpoints used', 'Allowed / alerted / denied', 'Call'],
    into.map((e) => [link(e.source, serviceHash(e.source)), e.endpoints.join(', '), verdicts(e), link('open', callHash(e.id))])));
  body.append(table(`Services ${id} calls`, ['Service', 'Endpoints used', 'Allowed / alerted / denied', 'Call'],
    out.map((e) => [link(e.target, serviceHash(e.target)), e.endpoints.join(', '), verdicts(e), link('open', callHash(e.id))])));
  body.append(el('h3', 'Learned endpoints'));
  const rules = el('ul', undefined, 'rules');
  rules.id = 'rules-list';
  rules.append(el('li', 'Loading…'));
  body.append(rules);
  body.append(el('h3', 'Alerts'), alertList(alertsOf((a) => a.destination === id), `Alerts of ${id}`));
  const doc = await getJSON(`/api/v1/allowlist?destination=${encodeURIComponent(id)}`);
  rules.replaceChildren();
  const found = doc.services[0];
  if (!found || !found.endpoints.length) { rules.append(el('li', 'No learned endpoints (a caller only).')); return; }
  for (const r of found.endpoints) {
    const callers = Object.keys(r.sources || {}).join(', ');
    rules.append(el('li', `${r.method} ${r.path} · ${r.count ?? 0} seen · from ${callers || 'no caller'}`));
  }
}

// the window's per-bucket counts summed into at most BARS steps
function steps(rows, since, width) {
  const out = [];
  for (let t = since; t < since + windowSeconds(); t += width) out.push({ time: t, allowed: 0, alerted: 0, denied: 0 });
  for (const r of rows) {
    const i = Math.min(out.length - 1, Math.max(0, Math.floor((r.time - since) / width)));
    out[i].allowed += r.allowed; out[i].alerted += r.alerted; out[i].denied += r.denied;
  }
  return out;
}

function bar(s, most) {
  const b = el('span', undefined, 'bar');
  b.setAttribute('aria-hidden', 'true');
  for (const kind of ['allowed', 'alerted', 'denied']) {
    const part = el('span', undefined, kind);
    part.style.width = `${(100 * s[kind]) / most}%`; // CSSOM, which the CSP allows
    b.append(part);
  }
  return b;
}

async function callPage(id, body) {
  const [source, target] = id.split('->');
  const edge = ctx.state.graph.edges.find((e) => e.id === id);
  body.append(facts([
    ['Caller', link(source, serviceHash(source))], ['Service', link(target, serviceHash(target))],
    ['Status', edge ? edge.status : 'not in this view'], ['Alerts', String(edge ? edge.alerts : 0)],
  ]));
  body.append(el('h3', 'Endpoints used'));
  const used = el('ul', undefined, 'rules');
  for (const e of edge ? edge.endpoints : []) used.append(el('li', e));
  if (!used.children.length) used.append(el('li', 'none learned'));
  body.append(used);
  const holder = el('div', 'Loading…');
  body.append(holder);
  body.append(el('h3', 'Alerts'), alertList(alertsOf((a) => a.source === source && a.destination === target), `Alerts of ${id}`));
  const since = Math.floor(Date.now() / 1000 - windowSeconds());
  const ns = target.includes('/') ? `&namespace=${encodeURIComponent(target.split('/')[0])}` : '';
  const doc = await getJSON(`/api/v1/edges?since=${since}${ns}`);
  const rows = doc.edges.filter((r) => r.source === source && r.destination === target);
  const width = Math.max(doc.bucket_seconds, Math.ceil(windowSeconds() / BARS / 60) * 60);
  const counted = steps(rows, since, width);
  const most = Math.max(1, ...counted.map((s) => s.allowed + s.alerted + s.denied));
  holder.replaceChildren(table(`Verdicts over the last ${windowName()}, per ${width / 60} min`,
    ['From', 'Allowed', 'Alerted', 'Denied', ''],
    counted.map((s) => [new Date(s.time * 1000).toISOString().slice(11, 16), String(s.allowed),
      String(s.alerted), String(s.denied), bar(s, most)])));
}

async function showPage() {
  const section = $('detail');
  const params = new URLSearchParams(location.hash.slice(1));
  const service = params.get('service');
  const call = params.get('call');
  if (!ctx.state.graph || (!service && !call)) { section.hidden = true; return; }
  const body = $('detail-body');
  body.replaceChildren();
  section.hidden = false;
  $('detail-title').textContent = service ? `Service ${service}` : `Calls ${call.replace('->', ' → ')}`;
  section.dataset.page = service ? 'service' : 'call';
  if (service && ctx.onService) ctx.onService(service); // e.g. the export's scope (exports.js)
  try {
    await (service ? servicePage(service, body) : callPage(call, body));
    section.dataset.ready = location.hash;
  } catch (err) {
    if (err.message !== 'unauthenticated') body.append(el('p', `Could not load the page: ${err.message}`));
  }
}

function closePage() {
  history.pushState(null, '', location.pathname);
  $('detail').hidden = true;
}

// the graph was (re)drawn: the window's words, and the page shown again on the new data
export function graphChanged() {
  for (const e of document.querySelectorAll('.window-name')) e.textContent = `last ${windowName()}`;
  showPage();
}

export function installViews(context) {
  ctx = context;
  const select = $('window');
  for (const [seconds, name] of WINDOWS) select.add(new Option(`last ${name}`, String(seconds), false, seconds === 3600));
  select.addEventListener('change', () => { status('Loading…'); ctx.refresh(); });
  window.addEventListener('hashchange', () => {
    showPage().then(() => {
      const t = $('detail-title');
      if (!$('detail').hidden) t.focus();
    });
  });
  $('detail-close').addEventListener('click', closePage);
}
