// /ws/chat: one socket, authenticated by its first frame, reconnected with backoff when it drops.
// Turns keep running on the server when the socket drops; the app reloads the stored messages.

import { accessToken, refreshTokens } from './api.js';

const PING_MS = 25_000;
const READY_TIMEOUT_MS = 15_000;
const MAX_BACKOFF_MS = 10_000;

export class ChatSocket {
  constructor({ onFrame, onState }) {
    this.onFrame = onFrame;
    this.onState = onState;
    this.ws = null;
    this.state = 'closed';
    this.wanted = false;
    this.attempts = 0;
    this.timer = 0;
    this.pinger = 0;
    this.waiters = [];
    this.everReady = false;
  }

  start() {
    this.wanted = true;
    this.connect();
  }

  stop() {
    this.wanted = false;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, 'bye');
    this.setState('closed', {});
    this.everReady = false;
    this.rejectWaiters(new Error('closed'));
  }

  setState(state, detail) {
    this.state = state;
    clearInterval(this.pinger);
    if (state === 'ready') this.pinger = setInterval(() => this.sendNow({ type: 'ping' }), PING_MS);
    this.onState?.(state, detail);
  }

  async connect() {
    if (!this.wanted || this.ws) return;
    clearTimeout(this.timer);
    this.setState(this.everReady ? 'reconnecting' : 'connecting', {});
    let token;
    try {
      token = await accessToken();
    } catch (error) {
      if (error?.status === 401) return; // signed out: the app shows the sign-in form
      this.retry();
      return;
    }
    if (!this.wanted || this.ws) return;
    const url = new URL('/ws/chat', window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url.href);
    this.ws = ws;
    ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'auth', token })));
    ws.addEventListener('message', (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === 'ready') {
        const reconnected = this.everReady;
        this.attempts = 0;
        this.everReady = true;
        this.setState('ready', { reconnected });
        const waiters = this.waiters;
        this.waiters = [];
        for (const waiter of waiters) waiter.resolve();
      } else if (frame.type !== 'pong') {
        this.onFrame(frame);
      }
    });
    ws.addEventListener('close', (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const wasReady = this.state === 'ready';
      this.setState('dropped', { code: event.code, wasReady });
      if (!this.wanted) return;
      if (event.code === 4401) {
        // The access token was refused: refresh once, then try again (a failed refresh signs out).
        refreshTokens().then(
          () => this.connect(),
          () => this.retry(), // a refused refresh signs out (and stops this socket); anything else: try again
        );
        return;
      }
      this.retry();
    });
  }

  retry() {
    if (!this.wanted) return;
    const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** this.attempts) * (0.75 + Math.random() / 2);
    this.attempts += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.state !== 'ready' && !this.ws) {
      this.attempts = 0;
      this.connect();
    }
  }

  rejectWaiters(error) {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.reject(error);
  }

  ready() {
    if (this.state === 'ready') return Promise.resolve();
    this.reconnectNow();
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      this.waiters.push(waiter);
      setTimeout(() => {
        const index = this.waiters.indexOf(waiter);
        if (index >= 0) {
          this.waiters.splice(index, 1);
          reject(new Error('timeout'));
        }
      }, READY_TIMEOUT_MS);
    });
  }

  sendNow(frame) {
    if (this.state !== 'ready' || !this.ws) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // Waits (bounded) for a ready socket, then sends; throws when the server stays unreachable.
  async send(frame) {
    await this.ready();
    if (!this.sendNow(frame)) throw new Error('not connected');
  }
}
