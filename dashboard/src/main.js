// meshward's dashboard: the service graph (cytoscape.js, fcose layout), the same data as a
// table, live alerts (server-sent events; alerts.js), the pages of a service or a call and the
// window (views.js), and the modes with their readiness report (modes.js). Everything from
// the server is put on the page as text (textContent), never as HTML.
import cytoscape from 'cytoscape';
import fcose from 'cytoscape-fcose';
import { showReview, startReview } from './review.js';
import { $, el, getJSON, status } from './dom.js';
import { addAlert, installAlertFilters, resetAlerts } from './alerts.js';
import { callLink, graphChanged, installViews, openCall, openService, serviceLink, windowSeconds } from './views.js';
import { fillModes, installModes } from './modes.js';
import { exportFor, installExports } from './exports.js';

cytoscape.use(fcose);

const LARGE = 200; // nodes: past this, a draft layout and lighter rendering while panning
const COLOURS = { allowed: '#2e6b30', alerted: '#c98a00', denied: '#b00020' };
const MODE_COLOURS = { learn: '#5b7db1', monitor: '#8a5a00', enforce: '#6a1b9a' };
const state = { cy: null, graph: null, stream: null, layoutMs: null, ready: false };
window.meshward = state; // read by the browser tests and bench/dashboard.py
state.cytoscape = cytoscape;

function namespace() { return $('namespace').value; }

function fillNamespaces(names) {
  const select = $('namespace');
  const chosen = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const n of names) select.add(new Option(n, n, false, n === chosen));
}

function cell(child) { const td = el('td'); td.append(child); return td; }

function fillTable(graph) {
  const modes = new Map(graph.nodes.map((n) => [n.id, n.mode]));
  const body = $('edges').tBodies[0];
  body.replaceChildren();
  for (const e of graph.edges) {
    const tr = document.createElement('tr');
    tr.append(cell(serviceLink(e.source)), cell(serviceLink(e.target)), el('td', modes.get(e.target) || ''),
      el('td', e.endpoints.join(', ')),
      el('td', `${e.verdicts.allowed} / ${e.verdicts.alerted} / ${e.verdicts.denied}`),
      el('td', e.alerts), cell(callLink(e.id, e.status)));
    body.append(tr);
  }
}

function elements(graph) {
  const out = [];
  for (const n of graph.nodes) {
    const cp = n.role === 'control-plane' ? `control plane${n.component ? ` (${n.component})` : ''} · ` : '';
    const badge = `${cp}${n.mode || 'outside'}${n.alerts ? ` · ${n.alerts} alerts` : ''}`;
    out.push({ group: 'nodes', data: { id: n.id, label: `${n.id}\n${badge}`, mode: n.mode,
      alerts: n.alerts, service: n.service, role: n.role } });
  }
  for (const e of graph.edges) {
    out.push({ group: 'edges', data: { id: e.id, source: e.source, target: e.target,
      status: e.status, endpoints: e.endpoints.join('\n'), kind: e.kind, bypass: e.bypass || 0 } });
  }
  return out;
}

function drawGraph(graph) {
  const large = graph.nodes.length > LARGE;
  if (state.cy) state.cy.destroy();
  state.ready = false;
  const started = performance.now();
  const style = [
    { selector: 'node', style: {
      label: large ? '' : 'data(label)', 'text-wrap': 'wrap', 'font-size': 10,
      'text-valign': 'bottom', 'text-margin-y': 4, width: 18, height: 18, 'background-color': '#888' } },
    { selector: 'node[alerts > 0]', style: { 'border-width': 3, 'border-color': '#b00020' } },
    { selector: 'edge', style: {
      width: 1.5, 'curve-style': large ? 'haystack' : 'bezier',
      'target-arrow-shape': large ? 'none' : 'triangle' } },
    { selector: 'node:selected', style: { 'border-width': 4, 'border-color': '#000' } },
    // the mesh guard: the control plane as diamonds on dashed edges; bypassed edges dotted
    { selector: 'node[role = "control-plane"]', style: { shape: 'diamond', width: 26, height: 26 } },
    { selector: 'edge[kind = "control-plane"]', style: { 'line-style': 'dashed' } },
    { selector: 'edge[bypass > 0]', style: { 'line-style': 'dotted', width: 3 } },
  ];
  for (const [mode, colour] of Object.entries(MODE_COLOURS)) {
    style.push({ selector: `node[mode = "${mode}"]`, style: { 'background-color': colour } });
  }
  for (const [status, colour] of Object.entries(COLOURS)) {
    style.push({ selector: `edge[status = "${status}"]`,
      style: { 'line-color': colour, 'target-arrow-color': colour } });
  }
  const options = { container: $('graph'), style, hideEdgesOnViewport: large,
    textureOnViewport: large, pixelRatio: 1, minZoom: 0.05, maxZoom: 4 };
  let cy;
  if (large) {
    // laid out on a headless core first (no renderer to notify of each move), then added to
    // the drawn one at their places: building a drawn core with 2,500 elements in its options
    // cost 3-5x more than adding them to an empty one (bench/dashboard.py)
    // `preset`: a core made with elements runs the default `grid` layout over them first
    // (200 ms of 1,100 at 500 services, bench/dashboard.py); only ids and ends are needed
    const els = elements(graph);
    const laying = performance.now();
    const headless = cytoscape({ headless: true, layout: { name: 'preset' }, elements: els.map(
      (e) => ({ group: e.group, data: { id: e.data.id, source: e.data.source, target: e.data.target } })) });
    headless.layout({ name: 'fcose', quality: 'draft', randomize: true, animate: false,
      packComponents: false }).run();
    state.layoutMs = performance.now() - laying;
    const box = { x1: Infinity, y1: Infinity, x2: -Infinity, y2: -Infinity };
    const placed = els.map((e) => {
      if (e.group !== 'nodes') return e;
      const p = headless.$id(e.data.id).position();
      box.x1 = Math.min(box.x1, p.x); box.x2 = Math.max(box.x2, p.x);
      box.y1 = Math.min(box.y1, p.y); box.y2 = Math.max(box.y2, p.y);
      return { ...e, position: { x: p.x, y: p.y } };
    });
    headless.destroy();
    cy = cytoscape(options);
    cy.add(placed);
    // fitted from the node positions: cy.fit() measures every element's drawn box (edges
    // too), 100-200 ms at this size
    const w = cy.width(), h = cy.height(), pad = 30;
    const zoom = Math.min(4, Math.max(0.05, Math.min((w - 2 * pad) / Math.max(1, box.x2 - box.x1),
      (h - 2 * pad) / Math.max(1, box.y2 - box.y1))));
    cy.viewport({ zoom, pan: { x: w / 2 - zoom * (box.x1 + box.x2) / 2,
      y: h / 2 - zoom * (box.y1 + box.y2) / 2 } });
    state.drawnMs = performance.now() - started;
    state.ready = true;
    document.body.dataset.graph = 'ready';
    cy.one('render', () => { state.paintedMs = performance.now() - started; });
  } else {
    cy = cytoscape(options);
    cy.add(elements(graph));
    const layout = cy.layout({ name: 'fcose', quality: 'default', randomize: true,
      animate: false, nodeDimensionsIncludeLabels: true, packComponents: true });
    const laying = performance.now(); // fcose emits layoutstart late (after its spectral step)
    layout.one('layoutstop', () => {
      state.layoutMs = performance.now() - laying;
      state.drawnMs = performance.now() - started;
      state.ready = true;
      document.body.dataset.graph = 'ready';
      cy.one('render', () => { state.paintedMs = performance.now() - started; });
    });
    layout.run();
  }
  cy.on('tap', 'node', (evt) => { openService(evt.target.id()); showReview(evt.target.id()); });
  cy.on('tap', 'edge', (evt) => openCall(evt.target.id()));
  state.cy = cy;
}

// a live alert counts on its edge and service at once (table and graph); a call never seen
// before redraws the graph
function countAlert(a) {
  const graph = state.graph;
  if (!graph) return;
  const edge = graph.edges.find((e) => e.source === a.source && e.target === a.destination);
  if (!edge) { refresh(); return; }
  edge.alerts += 1;
  if (a.verdict === 'deny') edge.denied += 1;
  if (a.verdict === 'deny') edge.verdicts.denied += 1; else edge.verdicts.alerted += 1;
  edge.status = edge.denied || edge.verdicts.denied ? 'denied' : 'alerted';
  const node = graph.nodes.find((n) => n.id === a.destination);
  if (node) node.alerts += 1;
  fillTable(graph);
  const drawn = state.cy && state.cy.$id(edge.id);
  if (drawn && drawn.length) drawn.data('status', edge.status);
  const service = state.cy && state.cy.$id(a.destination);
  if (service && service.length && node) service.data('alerts', node.alerts);
}

function listen() {
  if (state.stream) state.stream.close();
  resetAlerts();
  const ns = namespace();
  const stream = new EventSource(`/api/v1/alerts/stream${ns ? `?namespace=${encodeURIComponent(ns)}` : ''}`);
  let live = false; // the backlog before `ready` is already counted in the graph
  stream.addEventListener('alert', (e) => {
    const a = JSON.parse(e.data);
    addAlert(a);
    if (live) countAlert(a);
  });
  stream.addEventListener('ready', () => { live = true; document.body.dataset.alerts = 'live'; });
  state.stream = stream;
}

async function refresh() {
  const ns = namespace();
  const graph = await getJSON(`/api/v1/graph?window=${windowSeconds()}${ns ? `&namespace=${encodeURIComponent(ns)}` : ''}`);
  state.graph = graph;
  fillNamespaces(graph.namespaces);
  drawGraph(graph);
  // the table after the graph's first frame: 2,000 rows cost 300 ms before it (bench/dashboard.py)
  delete document.body.dataset.table;
  requestAnimationFrame(() => setTimeout(() => {
    if (state.graph !== graph) return;
    fillTable(graph);
    document.body.dataset.table = 'ready';
  }, 0));
  status(`${graph.nodes.length} services, ${graph.edges.length} calls${ns ? ` in ${ns}` : ''}`);
  graphChanged();
  fillModes().catch(() => {});
}

async function main() {
  $('namespace').addEventListener('change', () => { refresh(); listen(); });
  installAlertFilters();
  installViews({ state, refresh, onService: exportFor });
  installModes({ state, refresh });
  installExports();
  try {
    await refresh();
    listen();
    startReview();
  } catch (err) {
    if (err.message !== 'unauthenticated') status(`Error: ${err.message}`);
  }
}

main();
