// The allowlist review (docs/review.md): a service's learned rules with their callers,
// parameters, body shape, counts and first/last seen; what changed since the last review;
// the rules to look at twice; approve, widen, edit and remove. Every edit is a POST to
// /api/v1/review (audit-logged by serve, in effect in every replica). Text only (textContent).

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function when(t) {
  return t ? new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19) : '—';
}

function fields(table) {
  const names = Object.keys(table || {});
  if (!names.length) return '—';
  return names.map((n) => `${n === '*' ? 'any name' : n}: ${table[n].join('|')}`).join(', ');
}

function button(label, onClick, cls) {
  const b = el('button', label, cls);
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

function say(text) { $('review-status').textContent = text; }

const review = { service: '' };
window.meshward = Object.assign(window.meshward || {}, { review });

async function send(service, edit) {
  const r = await fetch(`/api/v1/review?destination=${encodeURIComponent(service)}`, {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json',
      'X-CSRF-Token': sessionStorage.getItem('meshward.csrf') || '' },
    body: JSON.stringify(edit),
  });
  const doc = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(doc.error || `HTTP ${r.status}`);
  return doc.service;
}

async function act(service, edit, done) {
  try {
    const view = await send(service, edit);
    say(done);
    draw(view);
  } catch (err) {
    say(`Not done: ${err.message}`);
  }
}

// a second click confirms a removal, in the row itself (no browser dialog)
function removeButton(service, rule, cell) {
  return button('Remove', () => {
    const name = `${rule.method} ${rule.path}`;
    cell.replaceChildren(
      button(`Confirm remove ${name}`, () => act(service,
        { action: 'remove', method: rule.method, path: rule.path },
        `Removed ${name}: denied in enforce by every replica.`), 'danger'),
      button('Cancel', () => draw(review.view)));
    cell.firstChild.focus();
  });
}

function editForm(service, rule, cell) {
  const form = el('form', undefined, 'edit');
  const method = el('input'); method.value = rule.method; method.name = 'method';
  method.setAttribute('aria-label', 'Method'); method.size = 7;
  const path = el('input'); path.value = rule.path; path.name = 'path';
  path.setAttribute('aria-label', 'Path template'); path.size = 24;
  form.append(method, path, button('Save', () => form.requestSubmit()),
    button('Cancel', () => draw(review.view)));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const written = { ...rule.rule, method: method.value.trim().toUpperCase(),
      path: path.value.trim() };
    if (written.path !== rule.path) delete written.path_values; // shapes of the old {str} places
    act(service, { action: 'edit', method: rule.method, path: rule.path, rule: written },
      `Edited ${rule.method} ${rule.path}.`);
  });
  cell.replaceChildren(form);
  path.focus();
}

function row(service, rule) {
  const tr = el('tr', undefined, `status-${rule.status}`);
  tr.dataset.rule = `${rule.method} ${rule.path}`;
  const callers = Object.entries(rule.callers).map(([c, n]) => `${c} (${n})`).join(', ');
  const body = rule.body_kinds.length ? `${rule.body_kinds.join('|')}; ${fields(rule.body)}` : '—';
  const look = rule.second_look.length ? `look again: ${rule.second_look.join(', ')}` : '';
  const status = (rule.status === 'approved' && rule.approved
    ? `approved by ${rule.approved.by}` : rule.status) + (rule.edited ? ' (edited)' : '');
  tr.append(el('th', `${rule.method} ${rule.path}`), el('td', callers || '—'),
    el('td', fields(rule.query)), el('td', body), el('td', rule.count),
    el('td', when(rule.first_seen)), el('td', when(rule.last_seen)),
    el('td', status, 'status'), el('td', look, look ? 'second-look' : ''));
  tr.firstChild.scope = 'row';
  const cell = el('td', undefined, 'actions');
  const name = `${rule.method} ${rule.path}`;
  if (rule.status !== 'approved') {
    cell.append(button('Approve', () => act(service,
      { action: 'approve', rules: [{ method: rule.method, path: rule.path }] }, `Approved ${name}.`)));
  }
  if (!rule.query['*']) {
    cell.append(button('Widen: any parameter', () => act(service,
      { action: 'widen', method: rule.method, path: rule.path, query: '*' }, `Widened ${name}.`)));
  }
  cell.append(button('Edit', () => editForm(service, rule, cell)), removeButton(service, rule, cell));
  tr.append(cell);
  return tr;
}

function draw(view) {
  review.view = view;
  const service = view.destination;
  $('review-title').textContent = `Review of ${service}`;
  const c = view.changes;
  const mark = view.reviewed
    ? `Last reviewed by ${view.reviewed.by} at ${when(view.reviewed.at)}.` : 'Never reviewed.';
  $('review-summary').textContent = `${mark} ${view.reviewed ? 'Since then' : 'So far'}: ${c.new} new, ${c.changed} changed, `
    + `${c.removed_since_review} removed; ${c.second_look} to look at twice. `
    + `${view.count} requests, first ${when(view.first_seen)}, last ${when(view.last_seen)}.`;
  const body = $('review-rules').tBodies[0];
  body.replaceChildren(...view.rules.map((r) => row(service, r)));
  const gone = $('review-removed');
  gone.replaceChildren(...view.removed.map((r) => el('li',
    r.by ? `${r.method} ${r.path} removed by ${r.by} at ${when(r.at)}`
      : `${r.method} ${r.path} removed in the stored object (kubectl, an import)`)));
  document.body.dataset.review = service;
}

export async function showReview(service) {
  review.service = service;
  $('review').hidden = false;
  const select = $('review-service');
  if (![...select.options].some((o) => o.value === service)) select.add(new Option(service, service));
  select.value = service;
  try {
    const r = await fetch(`/api/v1/review?destination=${encodeURIComponent(service)}`,
      { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const doc = await r.json();
    if (!doc.services.length) {
      $('review-rules').tBodies[0].replaceChildren();
      say(`${service} has no learned rules (a caller only).`);
      return;
    }
    say('');
    draw(doc.services[0]);
  } catch (err) {
    say(`Could not load the review: ${err.message}`);
  }
}

export async function startReview() {
  const select = $('review-service');
  select.addEventListener('change', () => select.value && showReview(select.value));
  $('review-approve-all').addEventListener('click', () => review.service && act(
    review.service, { action: 'approve' }, `Approved every rule of ${review.service}.`));
  try {
    const r = await fetch('/api/v1/review', { credentials: 'same-origin' });
    if (!r.ok) return;
    const doc = await r.json();
    for (const s of doc.services) select.add(new Option(s.destination, s.destination));
    $('review-thresholds').textContent = `Look again: ${doc.second_look.single_caller}; `
      + `or ${doc.second_look.short_burst}.`;
    $('review').hidden = false;
    document.body.dataset.reviewList = 'ready';
  } catch (err) {
    say(`Could not list the services: ${err.message}`);
  }
}
