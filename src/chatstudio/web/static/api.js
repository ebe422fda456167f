// The HTTP side: tokens (access token in memory, refresh token in localStorage so a reload stays
// signed in), one refresh at a time (refresh tokens rotate and a reused one revokes the session),
// JSON requests, SSE turns read from fetch, and error codes turned into sentences.

const REFRESH_KEY = 'chatstudio.refresh_token';
const LOCK_NAME = 'chatstudio-token-refresh';

export const session = { access: null, expiresAt: 0 };
let memoryRefresh = null;
let refreshTimer = 0;
let refreshing = null;
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, code, message, extra = {}) {
    super(message || 'The request failed.');
    this.status = status;
    this.code = code;
    this.extra = extra;
    this.retryAfter = extra.retry_after ?? null;
  }
}

export function onSessionEnd(fn) {
  listeners.add(fn);
}

export function storedRefreshToken() {
  try {
    return localStorage.getItem(REFRESH_KEY) ?? memoryRefresh;
  } catch {
    return memoryRefresh;
  }
}

function storeRefreshToken(token) {
  memoryRefresh = token;
  try {
    if (token) localStorage.setItem(REFRESH_KEY, token);
    else localStorage.removeItem(REFRESH_KEY);
  } catch {
    // storage disabled: the token lives in memory only, and a reload asks to sign in again
  }
}

function setTokens(pair) {
  session.access = pair.access_token;
  session.expiresAt = Date.now() + pair.expires_in * 1000;
  storeRefreshToken(pair.refresh_token);
  clearTimeout(refreshTimer);
  // Refresh silently well before expiry; a 401 also triggers a refresh, so a sleeping laptop is fine.
  refreshTimer = setTimeout(() => refreshTokens().catch(() => {}), Math.max(5000, pair.expires_in * 800));
}

export function endSession(reason) {
  const wasSignedIn = session.access !== null || storedRefreshToken() !== null;
  session.access = null;
  session.expiresAt = 0;
  clearTimeout(refreshTimer);
  storeRefreshToken(null);
  if (wasSignedIn) for (const fn of listeners) fn(reason);
}

// Another tab signed out: follow it.
window.addEventListener('storage', (event) => {
  if (event.key !== REFRESH_KEY && event.key !== null) return;
  if (!event.newValue && session.access) endSession('signed-out-elsewhere');
});

export function refreshTokens() {
  if (!refreshing) {
    const run = () => doRefresh();
    const locked = navigator.locks ? navigator.locks.request(LOCK_NAME, run) : run();
    refreshing = locked.finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

async function doRefresh() {
  // Read inside the lock: another tab may have rotated the token a moment ago.
  const token = storedRefreshToken();
  if (!token) throw new ApiError(401, 'unauthorized', 'Please sign in.');
  const response = await send('POST', '/api/v1/auth/refresh', { refresh_token: token });
  if (!response.ok) {
    const error = await toError(response);
    if (response.status === 401 || response.status === 403) endSession('expired');
    throw error;
  }
  setTokens(await response.json());
}

export async function accessToken() {
  if (!session.access || session.expiresAt - Date.now() < 10_000) await refreshTokens();
  return session.access;
}

async function send(method, path, body, { token, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, signal, credentials: 'same-origin' };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(path, init);
  } catch (error) {
    if (error?.name === 'AbortError') throw error;
    throw new ApiError(0, 'network_error', 'The server could not be reached.');
  }
}

export async function toError(response) {
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  const error = payload && typeof payload.error === 'object' && payload.error ? payload.error : {};
  const retry = response.headers.get('Retry-After');
  const extra = { ...error, retry_after: error.retry_after ?? (retry ? Number(retry) : null) };
  const code = typeof error.code === 'string' ? error.code : `http_${response.status}`;
  const message = typeof error.message === 'string' ? error.message : `The server answered ${response.status}.`;
  return new ApiError(response.status, code, message, extra);
}

// fetch with the access token; one refresh and retry on 401. Returns the Response.
export async function authedFetch(method, path, body, options = {}) {
  let response = await send(method, path, body, { ...options, token: await accessToken() });
  if (response.status === 401) {
    await refreshTokens();
    response = await send(method, path, body, { ...options, token: session.access });
  }
  return response;
}

export async function api(method, path, body, options = {}) {
  const response = options.anonymous
    ? await send(method, path, body, options)
    : await authedFetch(method, path, body, options);
  if (!response.ok) throw await toError(response);
  return response.status === 204 ? null : response.json();
}

export async function signIn(email, password) {
  const pair = await api('POST', '/api/v1/auth/login', { email, password }, { anonymous: true });
  setTokens(pair);
}

export async function signOut() {
  // Ends the sign-in on the server too (its refresh tokens stop working), then forgets the tokens here.
  const token = await accessToken().catch(() => null);
  if (token) await send('POST', '/api/v1/auth/logout', undefined, { token }).catch(() => null);
  endSession('signed-out');
}

// POST a turn with stream:true and yield its SSE events as {type, ...data}, the WebSocket frames' shape.
export async function* streamTurn(path, body, signal) {
  const response = await authedFetch('POST', path, { ...body, stream: true }, {
    headers: { Accept: 'text/event-stream' },
    signal,
  });
  if (!response.ok) throw await toError(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) type = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (!data.length) continue;
      try {
        yield { type, ...JSON.parse(data.join('\n')) };
      } catch {
        // not JSON: not one of ours
      }
    }
  }
}

const MESSAGES = {
  rate_limited: 'You are sending requests too quickly.',
  budget_exceeded: 'Your usage budget is used up. Ask an administrator to raise it, or wait for it to reset.',
  provider_busy: 'The model provider is busy right now. Try again in a moment.',
  provider_unavailable: 'The model provider cannot be reached right now. Try again later or pick another model.',
  provider_auth_error: 'The server could not sign in to this model provider. Please tell an administrator.',
  provider_error: 'The model provider failed to answer. Try again or pick another model.',
  context_length_exceeded: 'This conversation is too long for the model. Start a new chat or send a shorter message.',
  unknown_model: 'That model is not available on this server. Pick another one.',
  shutting_down: 'The server is restarting. Try again in a moment.',
  interrupted: 'The server restarted while replying; the reply was cut short.',
  weak_password: 'Choose a stronger password: at least 10 characters and not a common one.',
  email_taken: 'An account with this email already exists. Sign in instead.',
  invalid_credentials: 'The email or password is not right.',
  unauthorized: 'Your session has ended. Please sign in again.',
  network_error: 'The server could not be reached. Check your connection and try again.',
  file_too_large: 'The file is larger than the server accepts.',
  payload_too_large: 'The file is larger than the server accepts.',
  unsupported_file_type: 'The server does not accept this type of file.',
  unsupported_media_type: 'The server does not accept this type of file.',
  file_not_found: 'An attached file is gone. Attach it again.',
  model_not_vision_capable: 'This model cannot look at images. Pick a model with vision, or remove the image.',
  attachments_exceed_context: 'The attached files are too long for this model.',
  not_found: 'That was not found. It may have been deleted.',
  internal_error: 'Something went wrong on the server.',
};

// A sentence for a person, from an ApiError, a WebSocket/SSE error frame or a stored message's error_code.
export function describeError(error) {
  const code = error?.code || error?.error_code || 'error';
  const retryAfter = error?.retryAfter ?? error?.retry_after;
  let text = MESSAGES[code];
  if (code === 'weak_password' && typeof error.message === 'string' && error.message.length < 300) {
    text = `${text} (${error.message})`;
  }
  if (!text && code === 'validation_error' && Array.isArray(error.extra?.details)) {
    const parts = error.extra.details.map((d) => `${(d.loc || []).filter((p) => p !== 'body').join('.')}: ${d.msg}`);
    text = `Please check: ${parts.join('; ')}`;
  }
  if (!text) {
    const message = typeof error?.message === 'string' ? error.message.trim() : '';
    text = message && !message.startsWith('{') ? message : 'Something went wrong.';
  }
  if (retryAfter) text += ` Try again in ${Math.max(1, Math.ceil(Number(retryAfter)))} s.`;
  else if (code === 'rate_limited') text += ' Wait a moment and try again.';
  if (error?.extra?.request_id && (error.status >= 500 || code === 'internal_error')) {
    text += ` (request ${error.extra.request_id})`;
  }
  return text;
}
