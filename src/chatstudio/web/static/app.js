// The studio page: sign-in, the conversation list, the chat with streamed replies. Plain DOM, no
// framework; user and model text only ever goes in as text (see dom.js and markdown.js).

import * as API from './api.js';
import { $, clear, copyText, formatSize, h, randomId } from './dom.js';
import { renderMarkdown } from './markdown.js';
import { ChatSocket } from './socket.js';

const { api, describeError } = API;
const CONVERSATIONS = '/api/v1/conversations';
const PAGE_SIZE = 30;
const MAX_POLLS = 600;

const state = {
  user: null,
  config: null,
  models: [],
  defaultModel: null,
  query: '',
  pinned: [],
  recent: [],
  cursor: null,
  listDone: false,
  listToken: 0,
  loadingToken: 0,
  current: null, // the open conversation; null for a new chat not created yet
  branch: [], // the messages shown: root to the newest message
  turns: new Map(), // conversation id -> the reply being generated there
  pollTimer: 0,
  polls: 0,
  attachments: [],
};
const views = new WeakMap(); // message -> its <article>
const socket = new ChatSocket({ onFrame, onState: onSocketState });

const on = (id, type, fn) => $(id).addEventListener(type, fn);
const isStored = (m) => m && !String(m.id).startsWith('local-');
const currentTurn = () => state.current && state.turns.get(state.current.id);
const here = (conversationId) => state.current?.id === conversationId;
const placeholder = (model) => ({ id: `local-${randomId()}`, role: 'assistant', content: '', status: 'streaming', model });

function announce(text) {
  $('status').textContent = '';
  setTimeout(() => ($('status').textContent = text), 50);
}

let toastTimer = 0;
function toast(text) {
  $('toast').textContent = text;
  $('toast').classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => $('toast').classList.remove('show'), 3000);
}

function when(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 60) return 'just now';
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

// A form whose submit runs `work`; a thrown error is shown, as a sentence, in the form's error line.
function onSubmit(id, work) {
  on(id, 'submit', async (event) => {
    event.preventDefault();
    const form = $(id);
    const error = form.querySelector('.form-error');
    const buttons = [...form.querySelectorAll('button')];
    if (error) error.textContent = '';
    buttons.forEach((b) => (b.disabled = true));
    try {
      await work(form);
    } catch (problem) {
      if (error) error.textContent = describeError(problem);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });
}

function need(condition, message) {
  if (!condition) throw new Error(message);
}

// signing in and out

function selectTab(name) {
  for (const which of ['signin', 'signup']) {
    $(`tab-${which}`).setAttribute('aria-selected', String(which === name));
    $(`tab-${which}`).tabIndex = which === name ? 0 : -1;
    $(`${which}-form`).hidden = which !== name;
  }
}

function showAuth(message = '') {
  socket.stop();
  Object.assign(state, { user: null, current: null, branch: [], pinned: [], recent: [], attachments: [] });
  state.turns.clear();
  clearTimeout(state.pollTimer);
  $('app-view').hidden = true;
  $('auth-view').hidden = false;
  selectTab('signin');
  $('signin-error').textContent = message;
  $('signin-email').focus();
}

async function enterApp() {
  state.user = await api('GET', '/api/v1/users/me');
  $('user-label').textContent = state.user.name || state.user.email;
  $('auth-view').hidden = true;
  $('app-view').hidden = false;
  socket.start();
  loadModels();
  renderAttachments();
  const wanted = window.location.hash.match(/^#c\/([\w-]+)$/);
  await Promise.all([reloadLists(), wanted ? openConversation(wanted[1]) : newChat()]);
}

function wireAuth() {
  for (const [id, other] of [['signin', 'signup'], ['signup', 'signin']]) {
    on(`tab-${id}`, 'click', () => selectTab(id));
    on(`tab-${id}`, 'keydown', (event) => {
      if (event.key !== 'ArrowLeft' && event.key !== 'ArrowRight') return;
      selectTab(other);
      $(`tab-${other}`).focus();
    });
  }
  onSubmit('signin-form', async () => {
    const email = $('signin-email').value.trim();
    need(email && $('signin-password').value, 'Enter your email and password.');
    await API.signIn(email, $('signin-password').value);
    $('signin-password').value = '';
    await enterApp();
  });
  onSubmit('signup-form', async () => {
    const body = { email: $('signup-email').value.trim(), password: $('signup-password').value };
    const name = $('signup-name').value.trim();
    if (name) body.name = name;
    need(body.email, 'Enter your email address.');
    need(body.password.length >= 10, 'The password needs at least 10 characters.');
    await api('POST', '/api/v1/auth/register', body, { anonymous: true });
    await API.signIn(body.email, body.password);
    $('signup-password').value = '';
    await enterApp();
    toast('Welcome! Your account is ready.');
  });
  on('signout-button', 'click', () => API.signOut());
  API.onSessionEnd((reason) => {
    const why = {
      expired: 'Your session has ended. Please sign in again.',
      'signed-out-elsewhere': 'You signed out in another tab.',
    };
    showAuth(why[reason] || '');
  });
}

// dialogs

function openDialog(id, focus) {
  const dialog = $(id);
  const opener = document.activeElement;
  dialog.querySelector('.form-error').textContent = '';
  dialog.showModal();
  $(focus)?.focus();
  dialog.addEventListener('close', () => opener?.focus?.(), { once: true });
}

function wireDialogs() {
  for (const button of document.querySelectorAll('dialog [data-close]')) {
    button.addEventListener('click', () => button.closest('dialog').close());
  }
  on('password-button', 'click', () => {
    $('password-username').value = state.user?.email || '';
    $('current-password').value = $('new-password').value = '';
    openDialog('password-dialog', 'current-password');
  });
  onSubmit('password-form', async () => {
    const body = { current_password: $('current-password').value, new_password: $('new-password').value };
    need(body.current_password, 'Enter your current password.');
    need(body.new_password.length >= 10, 'The new password needs at least 10 characters.');
    await api('POST', '/api/v1/users/me/password', body);
    $('password-dialog').close();
    toast('Your password was changed.');
  });
  onSubmit('rename-form', async () => {
    const title = $('rename-input').value.trim();
    need(title, 'The title cannot be empty.');
    replaceInLists(await api('PATCH', `${CONVERSATIONS}/${dialogTarget.id}`, { title }));
    $('rename-dialog').close();
    toast('Renamed.');
  });
  onSubmit('delete-form', async () => {
    const { id } = dialogTarget;
    await api('DELETE', `${CONVERSATIONS}/${id}`);
    state.pinned = state.pinned.filter((c) => c.id !== id);
    state.recent = state.recent.filter((c) => c.id !== id);
    $('delete-dialog').close();
    if (here(id)) newChat();
    renderLists();
    toast('Conversation deleted.');
  });
}

// the conversation list: pinned ones first (all), then the rest, a page at a time as it scrolls

const listUrl = (extra) => {
  const params = new URLSearchParams(extra);
  if (state.query) params.set('q', state.query);
  return `${CONVERSATIONS}?${params}`;
};

async function reloadLists() {
  const token = ++state.listToken;
  try {
    const pinned = await api('GET', listUrl({ pinned: 'true', limit: '100' }));
    if (token !== state.listToken) return;
    Object.assign(state, { pinned: pinned.items, recent: [], cursor: null, listDone: false });
    renderLists();
    await loadMore(token);
  } catch (error) {
    listNote(describeError(error));
  }
}

async function loadMore(token = state.listToken) {
  if (state.listDone || state.loadingToken === token) return;
  state.loadingToken = token;
  try {
    const extra = { pinned: 'false', limit: String(PAGE_SIZE) };
    if (state.cursor) extra.cursor = state.cursor;
    const page = await api('GET', listUrl(extra));
    if (token !== state.listToken) return;
    state.recent.push(...page.items);
    state.cursor = page.next_cursor;
    state.listDone = !page.next_cursor;
    renderLists();
  } catch (error) {
    listNote(describeError(error));
    return;
  } finally {
    if (state.loadingToken === token) state.loadingToken = 0;
  }
  maybeLoadMore();
}

function maybeLoadMore() {
  const bottom = $('conversations').getBoundingClientRect().bottom;
  if (!state.listDone && $('list-sentinel').getBoundingClientRect().top < bottom + 200) loadMore();
}

function listNote(text) {
  $('list-empty').textContent = text;
  $('list-empty').hidden = !text;
}

function renderLists() {
  $('pinned-list').replaceChildren(...state.pinned.map(conversationItem));
  $('recent-list').replaceChildren(...state.recent.map(conversationItem));
  $('pinned-heading').hidden = !state.pinned.length;
  $('recent-heading').hidden = !state.pinned.length || !state.recent.length;
  const empty = !state.pinned.length && !state.recent.length && state.listDone;
  listNote(!empty ? '' : state.query ? `No conversations match “${state.query}”.` : 'No conversations yet.');
}

function conversationItem(conversation) {
  const { id, title, pinned } = conversation;
  const active = here(id);
  const action = (label, text, run) =>
    h('button', { type: 'button', class: 'icon-button small', 'aria-label': `${label}: ${title}`, title: label, text, on: { click: run } });
  const pin = action(pinned ? 'Unpin' : 'Pin', pinned ? '★' : '☆', () => togglePin(conversation));
  pin.setAttribute('aria-pressed', String(pinned));
  const open = h(
    'button',
    { type: 'button', class: 'conv-open', 'aria-current': active ? 'true' : null, on: { click: () => openConversation(id) } },
    h('span', { class: 'conv-title', text: title }),
    h('span', { class: 'conv-when', text: when(conversation.last_activity_at) }),
  );
  return h(
    'li',
    { class: active ? 'conv active' : 'conv' },
    open,
    h(
      'span',
      { class: 'conv-actions' },
      pin,
      action('Rename', '✎', () => {
        dialogTarget = conversation;
        $('rename-input').value = title;
        openDialog('rename-dialog', 'rename-input');
        $('rename-input').select();
      }),
      action('Delete', '✕', () => {
        dialogTarget = conversation;
        $('delete-text').textContent = `“${title}” and all its messages will be deleted.`;
        openDialog('delete-dialog', 'delete-cancel');
      }),
    ),
  );
}

let dialogTarget = null;

function replaceInLists(updated) {
  for (const list of [state.pinned, state.recent]) {
    const index = list.findIndex((c) => c.id === updated.id);
    if (index >= 0) list[index] = updated;
  }
  if (here(updated.id)) {
    state.current = updated;
    renderHeader();
  }
  renderLists();
}

async function togglePin(conversation) {
  try {
    const updated = await api('PATCH', `${CONVERSATIONS}/${conversation.id}`, { pinned: !conversation.pinned });
    if (here(updated.id)) state.current = updated;
    await reloadLists();
    announce(`${updated.pinned ? 'Pinned' : 'Unpinned'} ${updated.title}.`);
  } catch (error) {
    toast(describeError(error));
  }
}

function wireList() {
  on('new-chat', 'click', () => newChat());
  let searchTimer = 0;
  on('search', 'input', (event) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.query = event.target.value.trim();
      reloadLists();
    }, 250);
  });
  on('conversations', 'scroll', maybeLoadMore);
  window.addEventListener('resize', maybeLoadMore);
  on('menu-button', 'click', () => setNav(!$('app-view').classList.contains('nav-open')));
  on('scrim', 'click', () => setNav(false));
}

function setNav(open) {
  $('app-view').classList.toggle('nav-open', open);
  $('menu-button').setAttribute('aria-expanded', String(open));
  $('scrim').hidden = !open;
  if (open) $('search').focus();
}

// one conversation

function show(conversation) {
  clearTimeout(state.pollTimer);
  Object.assign(state, { current: conversation, branch: [], polls: 0 });
  window.history.replaceState(null, '', conversation ? `#c/${conversation.id}` : window.location.pathname);
  $('composer-error').textContent = '';
  setNav(false);
  renderHeader();
  renderMessages();
  renderLists();
  updateComposer();
}

function newChat() {
  show(null);
  $('composer-input').focus();
}

async function openConversation(id) {
  try {
    show(await api('GET', `${CONVERSATIONS}/${id}`));
  } catch (error) {
    newChat();
    $('composer-error').textContent = describeError(error);
    return;
  }
  await reloadCurrent();
  $('composer-input').focus();
}

async function fetchMessages(id) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < 100; page += 1) {
    const body = await api('GET', `${CONVERSATIONS}/${id}/messages?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...body.items);
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return items;
}

// Messages form a tree through parent_id; show the path from the root to the newest message.
function branchOf(messages) {
  const byId = new Map(messages.map((m) => [m.id, m]));
  const path = [];
  for (let m = messages[messages.length - 1]; m && !path.includes(m); m = byId.get(m.parent_id)) path.push(m);
  return path.reverse();
}

// A reply streaming into this tab is shown from memory, not from its (still empty) stored row.
function mergeLive(branch, conversationId) {
  const turn = state.turns.get(conversationId);
  if (!turn || turn.via === 'poll') return branch;
  const live = [turn.user, turn.msg].filter(Boolean);
  const merged = branch.map((m) => live.find((l) => l.id === m.id) || m);
  for (const m of live) if (!merged.includes(m)) merged.push(m);
  return merged;
}

async function reloadCurrent() {
  const conversation = state.current;
  if (!conversation) return;
  let messages;
  try {
    messages = await fetchMessages(conversation.id);
  } catch (error) {
    $('composer-error').textContent = describeError(error);
    return;
  }
  if (!here(conversation.id)) return;
  state.branch = mergeLive(branchOf(messages), conversation.id);
  renderMessages();
  const streaming = state.branch.find((m) => m.status === 'streaming');
  const turn = state.turns.get(conversation.id);
  if (turn?.via === 'poll' && !streaming) {
    state.turns.delete(conversation.id);
    updateComposer();
    announce('The reply is complete.');
  }
  // A reply made while this tab was not listening (a reload, a dropped socket): poll until it is stored,
  // every second, then slower, so a long reply does not use up the rate limit.
  if (!streaming || (turn && turn.via !== 'poll') || state.polls >= MAX_POLLS) return;
  if (!turn) state.turns.set(conversation.id, { via: 'poll', conversationId: conversation.id, msg: streaming, started: true });
  updateComposer();
  state.pollTimer = setTimeout(() => {
    state.polls += 1;
    if (here(conversation.id)) reloadCurrent();
  }, Math.min(1000 * 1.25 ** Math.max(0, state.polls - 5), 5000));
}

function renderHeader() {
  const conversation = state.current;
  $('chat-title').textContent = conversation ? conversation.title : 'New chat';
  document.title = conversation ? `${conversation.title} · AI Chat Studio` : 'AI Chat Studio';
  $('settings').open = !conversation;
  $('settings-save').hidden = !conversation;
  $('settings-error').textContent = '';
  $('system-prompt').value = conversation?.system_prompt || '';
  fillModels(conversation?.model || state.defaultModel);
}

function renderMessages() {
  const box = clear($('messages'));
  if (!state.branch.length) {
    const hint = state.current ? 'No messages yet.' : 'Start a new conversation: pick a model above if you like, then type below.';
    box.append(h('p', { class: 'empty', text: hint }));
    return;
  }
  const lastReply = state.branch.findLast((m) => m.role === 'assistant');
  for (const m of state.branch) box.append(messageView(m, m === lastReply));
  box.scrollTop = box.scrollHeight;
}

function messageView(message, isLastReply) {
  const mine = message.role === 'user';
  const button = (text, label, run, idleOnly) =>
    h('button', { type: 'button', class: `ghost small${idleOnly ? ' idle-only' : ''}`, text, 'aria-label': label, on: { click: run } });
  const article = h(
    'article',
    { class: `msg ${mine ? 'user' : 'assistant'}`, 'aria-label': mine ? 'You said' : 'Assistant replied' },
    h('div', { class: 'msg-role', text: mine ? 'You' : 'Assistant' }),
    h('div', { class: 'msg-body' }),
    h('p', { class: 'msg-error', hidden: true }),
    h(
      'div',
      { class: 'msg-foot' },
      h('span', { class: 'msg-meta' }),
      h(
        'div',
        { class: 'msg-actions' },
        button('Copy', mine ? 'Copy your message' : 'Copy the reply', async () => toast((await copyText(message.content)) ? 'Copied.' : 'Could not copy.')),
        mine && isStored(message) && button('Edit', 'Edit your message', () => startEdit(message, article), true),
        !mine && isLastReply && button('Regenerate', 'Regenerate the reply', () => regenerate(message), true),
      ),
    ),
  );
  views.set(message, article);
  updateView(message);
  return article;
}

function updateView(message) {
  const article = views.get(message);
  if (!article) return;
  const { status = 'completed', role } = message;
  const body = article.querySelector('.msg-body');
  article.dataset.status = status;
  article.setAttribute('aria-busy', String(status === 'streaming'));
  if (role === 'user') {
    body.textContent = message.content;
    if (message.files?.length) body.append(h('span', { class: 'msg-files', text: `Attached: ${message.files.join(', ')}` }));
  } else {
    body.replaceChildren(renderMarkdown(message.content));
    if (status === 'streaming') body.append(h('span', { class: 'cursor', 'aria-hidden': 'true' }));
  }
  const meta = [];
  if (role === 'assistant') {
    if (message.model) meta.push(message.model);
    if (message.input_tokens != null || message.output_tokens != null) {
      meta.push(`${message.input_tokens ?? 0} in · ${message.output_tokens ?? 0} out tokens`);
    }
    if (status === 'streaming') meta.push('generating…');
    if (status === 'cancelled') meta.push('stopped');
  }
  article.querySelector('.msg-meta').textContent = meta.join(' · ');
  const error = article.querySelector('.msg-error');
  const failed = status === 'failed' || status === 'interrupted';
  error.textContent = failed ? describeError({ code: message.error_code || status }) : message.note || '';
  error.hidden = !error.textContent;
}

// models and settings

async function loadModels() {
  try {
    const listing = await api('GET', '/api/v1/models');
    state.models = listing.items;
    state.defaultModel = listing.default;
  } catch {
    state.models = [];
  }
  fillModels(state.current?.model || state.defaultModel);
}

function fillModels(selected) {
  const ids = state.models.map((m) => m.id);
  if (selected && !ids.includes(selected)) ids.push(selected);
  const label = (id) => {
    if (id === state.defaultModel) return `${id} (default)`;
    return state.models.some((m) => m.id === id) ? id : `${id} (not listed)`;
  };
  const options = ids.map((id) => h('option', { value: id, text: label(id) }));
  $('model-select').replaceChildren(...(options.length ? options : [h('option', { value: '', text: 'Server default' })]));
  $('model-select').value = selected || '';
}

function wireSettings() {
  onSubmit('settings-form', async () => {
    if (!state.current) return;
    const body = { model: $('model-select').value || null, system_prompt: $('system-prompt').value || null };
    replaceInLists(await api('PATCH', `${CONVERSATIONS}/${state.current.id}`, body));
    toast('Settings saved.');
  });
}

// turns: a reply being generated, over the WebSocket (new messages) or SSE (regenerate, edit)

function updateComposer() {
  const busy = Boolean(currentTurn());
  const focused = document.activeElement;
  $('send-button').hidden = busy;
  $('stop-button').hidden = !busy;
  $('messages').classList.toggle('busy', busy);
  if (focused?.hidden) $('composer-input').focus();
}

function beginTurn(conversationId, via, user, msg, extra = {}) {
  const turn = { requestId: randomId(), conversationId, via, user, msg, started: false, stopRequested: false, ...extra };
  state.turns.set(conversationId, turn);
  updateComposer();
  announce('Generating a reply…');
  return turn;
}

async function submitComposer() {
  const input = $('composer-input');
  const content = input.value;
  if (!content.trim() || currentTurn()) return;
  $('composer-error').textContent = '';
  if (!state.current) {
    const body = {};
    if ($('model-select').value) body.model = $('model-select').value;
    if ($('system-prompt').value.trim()) body.system_prompt = $('system-prompt').value;
    try {
      const created = await api('POST', CONVERSATIONS, body);
      state.recent.unshift(created);
      show(created);
    } catch (error) {
      $('composer-error').textContent = describeError(error);
      return;
    }
  }
  const conversation = state.current;
  input.value = '';
  autosize();
  const parent = state.branch[state.branch.length - 1];
  const files = state.attachments.filter((chip) => chip.status === 'done');
  state.attachments = state.attachments.filter((chip) => chip.status !== 'done');
  renderAttachments();
  const user = { id: `local-${randomId()}`, role: 'user', content, files: files.map((f) => f.name) };
  const msg = placeholder(conversation.model);
  state.branch.push(user, msg);
  renderMessages();
  const turn = beginTurn(conversation.id, 'ws', user, msg, { content, files });
  const frame = { type: 'message', request_id: turn.requestId, conversation_id: conversation.id, content };
  if (isStored(parent)) frame.parent_id = parent.id;
  if (files.length) frame.file_ids = files.map((f) => f.id);
  try {
    await socket.send(frame);
  } catch {
    rejectTurn(turn, { code: 'network_error' });
  }
}

function onFrame(frame) {
  for (const turn of state.turns.values()) {
    if (turn.via === 'ws' && turn.requestId === frame.request_id) handleEvent(turn, frame);
  }
}

function handleEvent(turn, event) {
  if (state.turns.get(turn.conversationId) !== turn) return;
  const { msg } = turn;
  if (event.type === 'start') {
    turn.started = true;
    if (turn.user && event.user_message_id) turn.user.id = event.user_message_id;
    Object.assign(msg, { id: event.assistant_message_id, model: event.model });
    updateView(msg);
    if (turn.stopRequested) sendStop(turn);
  } else if (event.type === 'delta') {
    msg.content += event.text;
    if (!turn.drawing) {
      turn.drawing = true;
      requestAnimationFrame(() => {
        turn.drawing = false;
        const box = $('messages');
        const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
        updateView(msg);
        if (atBottom) box.scrollTop = box.scrollHeight;
      });
    }
  } else if (event.type === 'done') {
    Object.assign(msg, event.message);
    finishTurn(turn, 'The reply is complete.');
  } else if (event.type === 'error') {
    if (!turn.started && !event.message_id) return rejectTurn(turn, event);
    const stopped = event.code === 'cancelled';
    msg.status = stopped ? 'cancelled' : event.code === 'interrupted' ? 'interrupted' : 'failed';
    msg.error_code = event.code;
    finishTurn(turn, stopped ? 'Stopped.' : describeError(event));
    if (here(turn.conversationId)) reloadCurrent(); // the stored row has the token counts
  }
}

function finishTurn(turn, message) {
  state.turns.delete(turn.conversationId);
  if (here(turn.conversationId)) {
    renderMessages();
    updateComposer();
  }
  announce(message);
  // The first reply names the conversation; the list shows it on top.
  api('GET', `${CONVERSATIONS}/${turn.conversationId}`)
    .then((updated) => {
      if (![...state.pinned, ...state.recent].some((c) => c.id === updated.id)) state.recent.unshift(updated);
      replaceInLists(updated);
    })
    .catch(() => {});
}

// Refused before anything was stored (rate limit, budget, unknown model ...): say why, give the text back.
function rejectTurn(turn, error) {
  state.turns.delete(turn.conversationId);
  if (!here(turn.conversationId)) return;
  const text = describeError(error);
  $('composer-error').textContent = text;
  announce(text);
  if (turn.content && !$('composer-input').value) {
    $('composer-input').value = turn.content;
    autosize();
  }
  if (turn.files?.length) {
    state.attachments.push(...turn.files);
    renderAttachments();
  }
  updateComposer();
  reloadCurrent();
}

function stopTurn() {
  const turn = currentTurn();
  if (!turn) return;
  turn.stopRequested = true;
  announce('Stopping…');
  if (turn.started) sendStop(turn);
}

function sendStop(turn) {
  if (turn.via === 'ws' && socket.sendNow({ type: 'cancel', request_id: turn.requestId })) return;
  if (!isStored(turn.msg)) return;
  api('POST', `${CONVERSATIONS}/${turn.conversationId}/messages/${turn.msg.id}/cancel`).catch((error) => {
    if (error.status !== 404) toast(describeError(error));
  });
}

async function runHttpTurn(turn, path, body) {
  try {
    for await (const event of API.streamTurn(path, body)) handleEvent(turn, event);
  } catch (error) {
    if (state.turns.get(turn.conversationId) === turn && !turn.started) return rejectTurn(turn, error);
  }
  if (state.turns.get(turn.conversationId) === turn) {
    // The stream broke off: the reply goes on server-side; show it once stored.
    state.turns.delete(turn.conversationId);
    if (here(turn.conversationId)) reloadCurrent();
  }
}

function regenerate(message) {
  const conversation = state.current;
  if (!conversation || currentTurn() || !isStored(message)) return;
  const msg = placeholder(message.model);
  state.branch = [...state.branch.slice(0, state.branch.indexOf(message)), msg];
  renderMessages();
  const turn = beginTurn(conversation.id, 'http', null, msg);
  runHttpTurn(turn, `${CONVERSATIONS}/${conversation.id}/messages/${message.id}/regenerate`, {});
}

function startEdit(message, article) {
  if (currentTurn()) return;
  const area = h('textarea', { class: 'edit-area', value: message.content, rows: 3, 'aria-label': 'Edit your message' });
  const cancel = () => {
    renderMessages();
    $('composer-input').focus();
  };
  const form = h(
    'form',
    { class: 'edit-form' },
    area,
    h(
      'div',
      { class: 'edit-buttons' },
      h('button', { type: 'button', class: 'ghost small', text: 'Cancel', on: { click: cancel } }),
      h('button', { type: 'submit', class: 'primary small', text: 'Save and send' }),
    ),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submitEdit(message, area.value);
  });
  area.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === 'Escape') {
      event.stopPropagation();
      cancel();
    }
  });
  article.querySelector('.msg-body').replaceChildren(form);
  area.focus();
}

function submitEdit(message, content) {
  const conversation = state.current;
  if (!conversation || !content.trim() || currentTurn()) return;
  const user = { id: `local-${randomId()}`, role: 'user', content };
  const msg = placeholder(conversation.model);
  state.branch = [...state.branch.slice(0, state.branch.indexOf(message)), user, msg];
  renderMessages();
  const turn = beginTurn(conversation.id, 'http', user, msg);
  runHttpTurn(turn, `${CONVERSATIONS}/${conversation.id}/messages/${message.id}/edit`, { content });
}

function onSocketState(status, detail) {
  if (status === 'ready') {
    $('connection').hidden = true;
    if (detail.reconnected) reloadCurrent();
    return;
  }
  if (status === 'dropped' && detail.wasReady) {
    // The turns go on server-side; this tab stops listening and shows what gets stored.
    for (const [id, turn] of state.turns) {
      if (turn.via !== 'ws') continue;
      state.turns.delete(id);
      turn.msg.note = 'The connection dropped; the reply will appear here once it is stored.';
      updateView(turn.msg);
    }
    updateComposer();
  }
  if (status === 'reconnecting' || (status === 'dropped' && detail.wasReady)) {
    $('connection').textContent = 'Reconnecting…';
    $('connection').hidden = false;
  }
}

// the composer and attachments

function autosize() {
  const input = $('composer-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

function checkFile(file) {
  const { allowed_extensions: allowed, max_upload_size: limit } = state.config || {};
  if (!allowed) return null;
  const dot = file.name.lastIndexOf('.');
  const extension = dot > 0 ? file.name.slice(dot + 1).toLowerCase() : '';
  if (!allowed.includes(extension)) {
    const kind = extension ? `.${extension} files are` : 'Files without an extension are';
    return `${kind} not accepted. Allowed: ${allowed.map((e) => `.${e}`).join(', ')}.`;
  }
  if (file.size > limit) return `The file is ${formatSize(file.size)}; the limit is ${formatSize(limit)}.`;
  return file.size ? null : 'The file is empty.';
}

async function attachFile(file) {
  const chip = { name: file.name, size: file.size, status: 'uploading', text: 'Uploading…' };
  const problem = checkFile(file);
  if (problem) Object.assign(chip, { status: 'error', text: problem });
  state.attachments.push(chip);
  renderAttachments();
  if (!problem) {
    try {
      const form = new FormData();
      form.append('file', file, file.name);
      const response = await API.authedFetch('POST', '/api/v1/files', form);
      if (response.status === 404 || response.status === 405) {
        Object.assign(chip, { status: 'error', text: 'File uploads are not available on this server.' });
      } else if (!response.ok) {
        Object.assign(chip, { status: 'error', text: describeError(await API.toError(response)) });
      } else {
        Object.assign(chip, { status: 'done', id: (await response.json()).id, text: 'Uploaded.' });
      }
    } catch (error) {
      Object.assign(chip, { status: 'error', text: describeError(error) });
    }
    renderAttachments();
  }
  announce(`${file.name}: ${chip.text}`);
}

function renderAttachments() {
  const remove = (chip) => () => {
    state.attachments = state.attachments.filter((c) => c !== chip);
    renderAttachments();
    $('composer-input').focus();
  };
  const items = state.attachments.map((chip) =>
    h(
      'li',
      { class: `chip ${chip.status}`, dataset: { status: chip.status } },
      h('span', { class: 'chip-name', text: `${chip.name} (${formatSize(chip.size)})` }),
      h('span', { class: 'chip-text', text: chip.text }),
      h('button', { type: 'button', class: 'icon-button small', text: '✕', 'aria-label': `Remove ${chip.name}`, on: { click: remove(chip) } }),
    ),
  );
  $('attachments').replaceChildren(...items);
  $('attachments').hidden = !items.length;
}

async function loadConfig() {
  try {
    state.config = await api('GET', '/api/v1/client-config', undefined, { anonymous: true });
    const extensions = state.config.allowed_extensions.map((e) => `.${e}`);
    $('upload-limits').textContent = `Attach files up to ${formatSize(state.config.max_upload_size)}: ${extensions.join(', ')}.`;
    $('file-input').accept = extensions.join(',');
  } catch {
    state.config = null;
  }
}

function wireComposer() {
  const attachAll = async (files) => {
    for (const file of [...files]) await attachFile(file);
  };
  onSubmit('composer', submitComposer);
  on('composer-input', 'keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      submitComposer();
    }
  });
  on('composer-input', 'input', autosize);
  on('stop-button', 'click', stopTurn);
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape' || document.querySelector('dialog[open]')) return;
    if (currentTurn()) {
      event.preventDefault();
      stopTurn();
    } else if ($('app-view').classList.contains('nav-open')) setNav(false);
  });
  on('attach-button', 'click', () => $('file-input').click());
  on('file-input', 'change', (event) => {
    const files = [...event.target.files];
    event.target.value = '';
    attachAll(files);
  });
  const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes('Files');
  on('chat', 'dragover', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    $('drop-zone').hidden = false;
  });
  on('chat', 'dragleave', (event) => {
    if (!$('chat').contains(event.relatedTarget)) $('drop-zone').hidden = true;
  });
  on('chat', 'drop', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    $('drop-zone').hidden = true;
    attachAll(event.dataTransfer.files);
  });
  // A file dropped beside the drop area must not replace the page.
  for (const type of ['dragover', 'drop']) window.addEventListener(type, (event) => event.preventDefault());
  on('messages', 'click', async (event) => {
    const button = event.target.closest('.copy-code');
    if (!button) return;
    const ok = await copyText(button.closest('.code-block').querySelector('code').textContent);
    button.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => (button.textContent = 'Copy'), 1500);
  });
  window.addEventListener('online', () => socket.reconnectNow());
  document.addEventListener('visibilitychange', () => !document.hidden && state.user && socket.reconnectNow());
}

async function boot() {
  wireAuth();
  wireDialogs();
  wireList();
  wireSettings();
  wireComposer();
  loadConfig();
  if (API.storedRefreshToken()) {
    try {
      await API.refreshTokens();
      await enterApp();
      return;
    } catch {
      // the stored sign-in is gone, or the server is away: ask to sign in
    }
  }
  showAuth();
}

boot();
