// Live alerts with filters: namespace (the page's), service, threat, reason and time. Each
// alert shows what acted on it (the reasons, the matched rule, the mode) and its threats'
// redacted evidence, decoded from the stored HTML escaping and shown as text only.
import { $, el, unescapeHtml, when } from './dom.js';

const KEPT = 1000; // alerts held by the page (newest first); the list shows those that match
const SHOWN = 200;
const alerts = [];

function filters() {
  return {
    service: $('alert-service').value.trim(),
    threat: $('alert-threat').value.trim().toLowerCase(),
    reason: $('alert-reason').value.trim().toLowerCase(),
    since: Number($('alert-time').value) || 0,
  };
}

export function matches(a, f) {
  if (f.service && a.destination !== f.service && a.source !== f.service) return false;
  if (f.threat && !(a.threats || []).some((t) => unescapeHtml(t.name).toLowerCase().includes(f.threat))) return false;
  if (f.reason && !(a.reasons || []).some((r) => r.toLowerCase().includes(f.reason))) return false;
  if (f.since && (a.time || 0) < Date.now() / 1000 - f.since) return false;
  return true;
}

export function alertItem(a) {
  const li = el('li', undefined, a.verdict === 'deny' ? 'deny' : 'alert');
  li.append(el('div', `${when(a.time)} ${a.verdict} ${a.source} → ${a.destination} ${a.method} ${a.path}`));
  const acted = [];
  if (a.reasons && a.reasons.length) acted.push(`reasons: ${a.reasons.join(', ')}`);
  if (a.rule) acted.push(`rule ${a.rule}`);
  if (a.mode) acted.push(`mode ${a.mode}`);
  if (acted.length) li.append(el('div', acted.join(' · '), 'acted'));
  for (const t of a.threats || []) {
    const line = el('div', undefined, 'evidence');
    line.append(el('strong', unescapeHtml(t.name)), ` at ${unescapeHtml(t.location)}: `,
      el('code', unescapeHtml(t.evidence)));
    li.append(line);
  }
  return li;
}

function fillServices() {
  const list = $('alert-services');
  const seen = new Set();
  for (const a of alerts) { seen.add(a.destination); seen.add(a.source); }
  list.replaceChildren(...[...seen].filter(Boolean).sort().map((s) => new Option(s)));
}

export function render() {
  const f = filters();
  const shown = alerts.filter((a) => matches(a, f)).slice(0, SHOWN);
  $('alerts').replaceChildren(...shown.map(alertItem));
  const count = $('alert-count');
  const filtered = f.service || f.threat || f.reason || f.since;
  count.textContent = filtered ? `${shown.length} of ${alerts.length} alerts match` : `${alerts.length} alerts`;
  fillServices();
}

let pending = false;
export function addAlert(a) {
  alerts.unshift(a);
  if (alerts.length > KEPT) alerts.length = KEPT;
  if (!pending) { // a backlog of many arrives at once: one render per frame
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }
}

export function resetAlerts() { alerts.length = 0; render(); }

export function alertsOf(predicate) { return alerts.filter(predicate); }

export function filterBy(service) {
  $('alert-service').value = service;
  render();
}

export function installAlertFilters() {
  for (const id of ['alert-service', 'alert-threat', 'alert-reason']) $(id).addEventListener('input', render);
  $('alert-time').addEventListener('change', render);
  $('alert-clear').addEventListener('click', () => {
    for (const id of ['alert-service', 'alert-threat', 'alert-reason']) $(id).value = '';
    $('alert-time').value = '';
    render();
  });
}
