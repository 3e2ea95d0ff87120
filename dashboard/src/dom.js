// The page helpers every dashboard module shares: elements made with text only (never HTML),
// the status line, and the API calls (the session cookie; a write also sends the session's
// CSRF token, which the login page left in sessionStorage).

export const $ = (id) => document.getElementById(id);

export function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

export function status(text) { $('status').textContent = text; }

export class ApiError extends Error {
  constructor(url, code, reason) {
    super(`${url}: HTTP ${code}${reason ? `: ${reason}` : ''}`);
    this.code = code;
    this.reason = reason;
  }
}

async function answer(url, r) {
  if (r.status === 401) {
    status('Not logged in: open /login (or a link from `meshward dashboard`).');
    throw new Error('unauthenticated');
  }
  if (!r.ok) {
    let reason = '';
    try { reason = (await r.json()).error || ''; } catch { /* not JSON */ }
    throw new ApiError(url, r.status, reason);
  }
  return r.json();
}

export async function getJSON(url) {
  const r = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  return answer(url, r);
}

// a write: JSON (an object) or bytes as they are (a File: an uploaded HAR)
export async function send(method, url, body) {
  const headers = { Accept: 'application/json', 'X-CSRF-Token': sessionStorage.getItem('meshward.csrf') || '' };
  let data = body;
  if (body !== undefined && !(body instanceof Blob)) {
    headers['Content-Type'] = 'application/json';
    data = JSON.stringify(body);
  }
  const r = await fetch(url, { method, credentials: 'same-origin', headers, body: data });
  return answer(url, r);
}

// evidence and locations are stored HTML-escaped (meshward.core.redact.escaped): decoded here
// for reading, and still only ever put on the page as text. DOMParser would build a document
// from attacker text; a fixed table of the five references escaped() makes is enough.
const ENTITIES = { '&amp;': '&', '&lt;': '<', '&gt;': '>', '&quot;': '"', '&#x27;': "'", '&#39;': "'" };
export function unescapeHtml(text) {
  return String(text ?? '').replace(/&(?:amp|lt|gt|quot|#x27|#39);/g, (m) => ENTITIES[m]);
}

export function when(seconds) {
  return new Date((seconds || 0) * 1000).toISOString().replace('T', ' ').slice(0, 19);
}
