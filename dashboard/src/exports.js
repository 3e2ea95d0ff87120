// The export download: the allowlist as Istio AuthorizationPolicy, Linkerd policy or OpenAPI
// (GET /api/v1/exports/{format}), for all services or the one selected in the graph. The file
// is fetched with the session (same origin) and saved from a blob: nothing is put on the page
// but text.
const $ = (id) => document.getElementById(id);

function setStatus(text) { $('export-status').textContent = text; }

// the service chosen in the graph becomes the export's scope (kept as an option once chosen)
export function exportFor(service) {
  const scope = $('export-scope');
  if (!scope) return;
  if (![...scope.options].some((o) => o.value === service)) scope.add(new Option(service, service));
  scope.value = service;
}

async function download() {
  const format = $('export-format').value;
  const service = $('export-scope').value;
  const url = `/api/v1/exports/${encodeURIComponent(format)}${service ? `?destination=${encodeURIComponent(service)}` : ''}`;
  setStatus('Exporting…');
  try {
    const r = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/yaml' } });
    if (r.status === 404 && service) { setStatus(`${service} has no learned rules to export.`); return; }
    if (!r.ok) { setStatus(`Export failed: HTTP ${r.status}`); return; }
    const text = await r.text();
    const name = `meshward-${format}${service ? `-${service.replace(/[^A-Za-z0-9._-]/g, '-')}` : ''}.yaml`;
    const link = document.createElement('a');
    link.href = URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    const notes = Number(r.headers.get('X-Meshward-Export-Notes') || 0);
    setStatus(`Saved ${name}${notes ? ` (${notes} things it cannot carry are listed at its head; meshward still checks them)` : ''}.`);
  } catch (err) {
    setStatus(`Export failed: ${err.message}`);
  }
}

export function installExports() {
  const button = $('export-download');
  if (button) button.addEventListener('click', download);
}
