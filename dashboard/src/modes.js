// Modes per namespace, switched only after a confirmation that shows the enforce-readiness
// report: the namespace's recent calls (or an uploaded HAR) replayed through the allowlist as
// if in the new mode (GET/POST /api/v1/readiness/NS), what would be denied by service and
// reason. In a cluster the mode is the Namespace label (PUT answers 409): the dialog then
// shows the report and the exact `kubectl label` command instead of a switch.
import { $, el, getJSON, send, ApiError, when } from './dom.js';

const MODES = ['off', 'learn', 'monitor', 'enforce'];
const NEXT = { off: 'learn', learn: 'monitor', monitor: 'enforce', enforce: 'monitor' };
let ctx = null; // { state, refresh }
let current = null; // { namespace, was, report }

function button(text, onClick, cls) {
  const b = el('button', text, cls);
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

export async function fillModes() {
  const doc = await getJSON('/api/v1/modes');
  const names = new Set([...(ctx.state.graph ? ctx.state.graph.namespaces : []), ...Object.keys(doc.modes)]);
  const body = $('modes').tBodies[0];
  body.replaceChildren();
  for (const ns of [...names].sort()) {
    const mode = doc.modes[ns] || doc.default;
    const tr = document.createElement('tr');
    const action = el('td');
    action.append(button(`Change ${ns}…`, () => openModeDialog(ns)));
    tr.append(el('td', ns), el('td', mode + (doc.modes[ns] ? '' : ' (default)')), action);
    body.append(tr);
  }
  return doc;
}

function reasonsText(list) { return list.map((r) => `${r.reason} ${r.calls}`).join(', '); }

function renderReport(report) {
  const box = $('readiness');
  box.replaceChildren();
  const origin = report.from === 'har'
    ? `${report.calls} requests of the uploaded HAR (${report.har.outside_namespace} to other namespaces, ${report.har.bad_entries} unreadable)`
    : `${report.calls} recent calls this serve kept (${report.shapes} kinds${report.since ? `, since ${when(report.since)}` : ''})`;
  box.append(el('h3', `Readiness: ${report.namespace} as ${report.mode}`));
  box.append(el('p', `From ${origin}.`));
  const verdict = el('p', `Would be denied: ${report.would_deny}. Would be alerted: ${report.would_alert}.`, 'readiness-summary');
  verdict.id = 'readiness-summary';
  box.append(verdict);
  if (!report.calls) {
    box.append(el('p', `No calls to replay: nothing tells what ${report.mode} would do. Upload a HAR of typical traffic, or let the namespace run in monitor first.`));
  }
  if (report.bodies_not_kept) box.append(el('p', `${report.bodies_not_kept} calls were replayed without their body (not JSON or a form, or over 16 KiB).`));
  const hit = report.services.filter((s) => s.would_deny || s.would_alert);
  if (hit.length) {
    const t = el('table');
    t.id = 'readiness-services';
    t.append(el('caption', 'What would be denied or alerted, by service and reason'));
    const head = document.createElement('tr');
    for (const h of ['Service', 'Calls', 'Would deny', 'Would alert', 'Reasons', 'Examples']) { const th = el('th', h); th.scope = 'col'; head.append(th); }
    t.createTHead().append(head);
    const tb = t.createTBody();
    for (const s of hit) {
      const tr = document.createElement('tr');
      const ex = el('td');
      const ul = el('ul', undefined, 'examples');
      for (const e of s.examples) ul.append(el('li', `${e.method} ${e.path} from ${e.source} ×${e.calls}: ${e.verdict} (${e.reasons.join(', ')})`));
      ex.append(ul);
      tr.append(el('td', s.service), el('td', s.calls), el('td', s.would_deny), el('td', s.would_alert), el('td', reasonsText(s.reasons)), ex);
      tb.append(tr);
    }
    box.append(t);
  }
  const byLabel = report.switch.by === 'label';
  $('mode-label').hidden = !byLabel;
  $('mode-confirm-line').hidden = byLabel;
  $('mode-switch').hidden = byLabel;
  $('mode-command').textContent = byLabel ? report.switch.command : '';
  const n = report.would_deny;
  const denies = n ? `: ${n} ${n === 1 ? 'call like this one' : 'calls like these'} would be denied` : '';
  $('mode-confirm-label').textContent = `Yes, switch ${report.namespace} from ${current.was} to ${report.mode}${denies}`;
  $('mode-confirm').checked = false;
  $('mode-switch').disabled = true;
  $('mode-switch').textContent = `Switch ${report.namespace} to ${report.mode}`;
  $('mode-dialog').dataset.report = report.from;
}

async function loadReport(har) {
  const ns = current.namespace;
  const mode = $('mode-target').value;
  const url = `/api/v1/readiness/${encodeURIComponent(ns)}?mode=${mode}`;
  $('mode-dialog').dataset.report = '';
  $('readiness').replaceChildren(el('p', har ? `Replaying ${har.name}…` : 'Replaying the recent calls…'));
  try {
    current.report = har ? await send('POST', url, har) : await getJSON(url);
    renderReport(current.report);
  } catch (err) {
    $('readiness').replaceChildren(el('p', `Could not make the readiness report: ${err.reason || err.message}`));
  }
}

function showLabelCommand(command, why) {
  $('mode-label').hidden = false;
  $('mode-command').textContent = command;
  $('mode-result').textContent = why;
  $('mode-switch').hidden = true;
  $('mode-confirm-line').hidden = true;
}

async function doSwitch() {
  const { namespace } = current;
  const mode = $('mode-target').value;
  const dialog = $('mode-dialog');
  try {
    const done = await send('PUT', `/api/v1/modes/${encodeURIComponent(namespace)}`, { mode });
    $('mode-result').textContent = `${namespace} is now in ${done.mode} (was ${done.was}).`;
    dialog.dataset.switched = done.mode;
    current.was = done.mode;
    $('mode-switch').disabled = true;
    $('mode-confirm').checked = false;
    await ctx.refresh();
    await fillModes();
  } catch (err) {
    if (err instanceof ApiError && err.code === 409) {
      const command = `kubectl label namespace ${namespace} meshward.io/mode=${mode} --overwrite`;
      showLabelCommand(command, 'This serve cannot switch modes: in a cluster the mode is the Namespace label.');
    } else {
      $('mode-result').textContent = `Not switched: ${err.reason || err.message}`;
    }
  }
}

export async function openModeDialog(namespace) {
  const doc = await getJSON('/api/v1/modes');
  const was = doc.modes[namespace] || doc.default;
  current = { namespace, was, report: null };
  const dialog = $('mode-dialog');
  delete dialog.dataset.switched;
  $('mode-dialog-title').textContent = `Mode of ${namespace}: now ${was}`;
  $('mode-target').value = NEXT[was] || 'enforce';
  $('mode-har').value = '';
  $('mode-result').textContent = '';
  $('mode-label').hidden = true;
  if (!dialog.open) dialog.showModal();
  await loadReport(null);
}

function build() {
  const dialog = $('mode-dialog');
  const title = el('h2');
  title.id = 'mode-dialog-title';
  const target = el('select');
  target.id = 'mode-target';
  for (const m of MODES) target.add(new Option(m, m));
  const targetLabel = el('label', 'New mode ');
  targetLabel.htmlFor = 'mode-target';
  const har = el('input');
  Object.assign(har, { type: 'file', id: 'mode-har', accept: '.har,application/json' });
  const harLabel = el('label', 'Replay a HAR file instead of the recent calls ');
  harLabel.htmlFor = 'mode-har';
  const report = el('div');
  report.id = 'readiness';
  report.setAttribute('aria-live', 'polite');
  const confirm = el('input');
  Object.assign(confirm, { type: 'checkbox', id: 'mode-confirm' });
  const confirmLabel = el('label');
  Object.assign(confirmLabel, { id: 'mode-confirm-label', htmlFor: 'mode-confirm' });
  const confirmLine = el('p');
  confirmLine.id = 'mode-confirm-line';
  confirmLine.append(confirm, ' ', confirmLabel);
  const label = el('div', undefined, 'label-command');
  label.id = 'mode-label';
  const code = el('code');
  code.id = 'mode-command';
  label.append(el('p', 'In this cluster a namespace’s mode is its label (meshward.io/mode); run:'), code, ' ',
    button('Copy', () => navigator.clipboard && navigator.clipboard.writeText(code.textContent)));
  label.hidden = true;
  const go = button('Switch', doSwitch, 'primary');
  go.id = 'mode-switch';
  const result = el('p');
  Object.assign(result, { id: 'mode-result' });
  result.setAttribute('role', 'status');
  const controls = el('p');
  controls.append(targetLabel, target, ' ', harLabel, har);
  const actions = el('p');
  actions.append(go, ' ', button('Close', () => dialog.close()));
  dialog.append(title, controls, report, confirmLine, label, actions, result);
  target.addEventListener('change', () => loadReport(har.files[0] || null));
  har.addEventListener('change', () => loadReport(har.files[0] || null));
  confirm.addEventListener('change', () => { go.disabled = !confirm.checked || !current.report; });
}

export function installModes(context) {
  ctx = context;
  build();
}
