/**
 * The dashboard's only way to the sidecar: its own session routes (`/ui/login`, `/ui/logout`,
 * `/ui/session`) and the Operator API door (`POST /api/fabric.v1.<Service>/<Method>`), which
 * accepts the session cookie together with the CSRF token sent here in `x-fabric-csrf`.
 *
 * The admin token is sent once, to `/ui/login`, and not kept: the browser holds only the
 * `HttpOnly` session cookie (which scripts cannot read) and the CSRF token in memory.
 */

/** An error answer of the sidecar: its HTTP status and FABRIC_ERR_* code. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let csrf = '';
/** Called when the session is gone (401): the app shows the login form. */
let onLoggedOut = () => {};

export function whenLoggedOut(handler) {
  onLoggedOut = handler;
}

async function failure(res, sessionCall = true) {
  let body = {};
  try {
    body = await res.json();
  } catch {
    // not JSON
  }
  const e = body.error ?? body;
  const err = new ApiError(res.status, e.code ?? `HTTP ${res.status}`, e.message ?? res.statusText);
  if (res.status === 401 && sessionCall) {
    csrf = '';
    onLoggedOut(err);
  }
  return err;
}

/** The live session (`{ admin }`) or undefined. */
export async function currentSession() {
  const res = await fetch('/ui/session', { credentials: 'same-origin' });
  if (!res.ok) return undefined;
  const body = await res.json();
  csrf = body.csrf;
  return { admin: body.admin };
}

/** Logs in with the admin token; throws ApiError (401 for a wrong token). */
export async function login(token) {
  const res = await fetch('/ui/login', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token }),
  });
  // A wrong token is a 401 too, but no session ended.
  if (!res.ok) throw await failure(res, false);
  const body = await res.json();
  csrf = body.csrf;
  return { admin: body.admin };
}

export async function logout() {
  const res = await fetch('/ui/logout', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'x-fabric-csrf': csrf },
  });
  csrf = '';
  if (!res.ok && res.status !== 401) throw await failure(res);
}

function post(method, body, signal) {
  const headers = { 'content-type': 'application/json', 'x-fabric-csrf': csrf };
  // What the page fetches while hidden (its 5 s re-reads) keeps no session alive: the sidecar
  // ends a session 30 minutes after the last request of a visible page.
  if (document.visibilityState === 'hidden') headers['x-fabric-background'] = '1';
  return fetch(`/api/fabric.v1.${method}`, {
    method: 'POST',
    credentials: 'same-origin',
    headers,
    body: JSON.stringify(body ?? {}),
    signal,
  });
}

/** Calls a unary method, e.g. `call('FabricService/ListAgents', {})`; throws ApiError. */
export async function call(method, body) {
  const res = await post(method, body);
  if (!res.ok) throw await failure(res);
  return res.json();
}

/**
 * Reads a server stream (`EventService/Watch`, `ApprovalService/Watch`): NDJSON lines
 * `{message}` … `{end}`. Calls `onMessage` for each message; resolves when the stream ends
 * (rejects with ApiError when the server ended it with an error or refused it; status 401 when
 * it ended because the session did, which logs the page out).
 */
export async function watch(method, body, onMessage, signal) {
  const res = await post(method, body, signal);
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (line === '') continue; // keep-alive
      const json = JSON.parse(line);
      if (json.message !== undefined) onMessage(json.message);
      else if (json.end !== undefined) {
        const e = json.end.error;
        if (!e) return;
        // The session ended while the stream was open (logout, idle, its 8 hours): as a 401.
        if (e.code === 'FABRIC_ERR_UNAUTHENTICATED') {
          const err = new ApiError(401, e.code, e.message);
          csrf = '';
          onLoggedOut(err);
          throw err;
        }
        throw new ApiError(0, e.code, e.message);
      }
    }
  }
  throw new ApiError(0, 'STREAM_CUT', 'the stream was cut');
}

/** `GET /readyz`: `{ ready, checks }` (no credential needed). */
export async function readiness() {
  const res = await fetch('/readyz', { credentials: 'omit' });
  return res.json();
}

/** Every page of a paged List method (`items` names the repeated field). */
export async function listAll(method, body, items, max = 5000) {
  const all = [];
  let pageToken = '';
  do {
    const page = await call(method, { ...body, pageSize: 1000, pageToken });
    all.push(...(page[items] ?? []));
    pageToken = page.nextPageToken ?? '';
  } while (pageToken !== '' && all.length < max);
  return all;
}
