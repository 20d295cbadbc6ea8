/* Lockstep admin console: Constants, the page state, DOM helpers, formatting and the API client.
 */
import { endSession } from './session.js';

// ------------------------------------------------------------ constants

export const API = '/api/v1';
export const CSRF_STORAGE_KEY = 'lockstep.csrf';
export const ALIGNMENT_LIMIT = 12;
export const ANALYSIS_LIMIT = 120;
export const SLOW_EVERY_TICKS = 5;
export const POLL_INTERVAL_MS = 2000;
export const SLOW_EVERY_POLLS = 3; // ≈ every 6 s while polling
export const SSE_RETRY_MS = 15000;
export const MAX_EVENTS = 500;
export const BITRATE_MIN_KBPS = 50;
export const BITRATE_MAX_KBPS = 100000;
export const MEASURED_OVERSHOOT = 1.25; // measured above current × this → amber
export const HLS_RETRY_MS = 3000;
export const HLS_MIME = 'application/vnd.apple.mpegurl';
export const TOAST_MS = 6000;
export const SHORT_HASH_LEN = 8;
export const ALL_TRACKS = '*';
export const DASH = '—';
export const DELETE_CONFIRM_MS = 5000;  // how long Delete waits for its confirming click

export const NODE_COLOURS = ['#5aa9ff', '#b48cff', '#3cc8c8', '#ff7eb6', '#d8c27a', '#8fa3bf', '#ff9d76', '#7fd1a8'];

// Clock states (docs/time.md): freerun, locking, locked, holdover.
export const CLOCK_TONE = { locked: 'ok', locking: 'warn', holdover: 'warn', freerun: 'bad' };

export const EVENT_TONE = {
  election: 'info', failover: 'warn', 'node-down': 'bad', 'node-up': 'ok',
  isolated: 'bad', rejoined: 'ok', ladder: 'info', channel: 'neutral', config: 'info',
  error: 'bad', clock: 'warn', drill: 'warn', prediction: 'warn', steering: 'info',
  standby: 'warn',
};

// ------------------------------------------------------------ state

export const state = {
  inApp: false,
  gen: 0,              // bumped on login/logout; stale responses are dropped
  csrf: null,
  mode: 'connecting',  // live | polling | offline | connecting
  status: null,
  swarm: null,
  channel: null,
  channelId: null,
  analysis: [],
  history: [],
  events: new Map(),   // key → event
  lastEventId: 0,
  es: null,
  pollTimer: null,
  pollCount: 0,
  sseRetryTimer: null,
  ticks: 0,
  fastBusy: false,
  slowBusy: false,
  actionSeq: 0,        // bumped when start/stop completes (see refreshFast)
  channelBusy: false,
  channels: [],             // GET /channels: every channel of the appliance
  renditionRows: new Map(), // name → row handles
  config: null,             // GET /channels/{id}/config, as the form was filled
  localPending: new Map(),  // name → {bitrate_kbps, from_segment} after a 202
  nodeColours: new Map(),
  alignment: null,
  alignTrack: ALL_TRACKS,
  preview: { source: 'combined', url: null, active: false, hls: null, retryTimer: null, mediaRecovered: false },
};

// ------------------------------------------------------------ DOM helpers

export const $ = (id) => document.getElementById(id);

/** Creates an element. props: class, text, dataset, style, on<event>, or attributes. */
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value == null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = String(value);
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key === 'style') Object.assign(node.style, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function setPill(id, tone, text, title) {
  const pill = $(id);
  pill.className = `pill tone-${tone}`;
  pill.textContent = text;
  pill.title = title || '';
}

export function toast(message, tone = 'info') {
  const box = el('div', { class: `toast tone-${tone}`, role: 'status', text: message });
  $('toasts').append(box);
  setTimeout(() => box.remove(), TOAST_MS);
}

// ------------------------------------------------------------ formatting

export const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
export const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString('en-US') : DASH);
// Frame numbers and segment indices are identifiers: no digit grouping.
export const fmtId = (v) => (isNum(v) ? String(Math.round(v)) : DASH);
export const fmtKbps = (v) => (isNum(v) ? `${fmtInt(v)} kbit/s` : DASH);
export const fmtPct = (v) => (isNum(v) ? `${Math.round(v * 100)}%` : DASH);
export const fmtFixed = (v, digits) => (isNum(v) ? v.toFixed(digits) : DASH);

export function fmtMs(v) {
  if (!isNum(v)) return DASH;
  return Math.abs(v) < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
}

/** Nanoseconds to a short human value: 850 ns, 1.2 µs, 3.4 ms, 1.20 s. */
export function fmtNs(ns) {
  if (!isNum(ns)) return DASH;
  const a = Math.abs(ns);
  if (a < 1e3) return `${Math.round(ns)} ns`;
  if (a < 1e6) return `${(ns / 1e3).toFixed(1)} µs`;
  if (a < 1e9) return `${(ns / 1e6).toFixed(1)} ms`;
  return `${(ns / 1e9).toFixed(2)} s`;
}

export function fmtDuration(seconds) {
  if (!isNum(seconds)) return DASH;
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60), r = s % 60;
  const pad = (n) => String(n).padStart(2, '0');
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${pad(m)}m`;
  if (m > 0) return `${m}m ${pad(r)}s`;
  return `${r}s`;
}

export function fmtClock(ms) {
  if (!isNum(ms)) return DASH;
  return new Date(ms).toLocaleTimeString('en-GB', { hour12: false });
}

// ------------------------------------------------------------ API

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || null;
  }
}

export async function readJson(res) {
  const text = res.status === 204 ? '' : await res.text();
  if (!text) return { data: null, text };
  try {
    return { data: JSON.parse(text), text };
  } catch (_) {
    return { data: null, text };
  }
}

/**
 * One request. Mutations carry the CSRF token and a JSON body ({} when the
 * endpoint takes none). A 401 (except on login itself) ends the session.
 */
export async function api(method, path, body, { authRedirect = true } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    if (state.csrf) headers['X-CSRF-Token'] = state.csrf;
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let res;
  try {
    res = await fetch(API + path, init);
  } catch (_) {
    throw new ApiError(0, 'cannot reach the appliance');
  }
  const { data, text } = await readJson(res);
  if (res.status === 401 && authRedirect) endSession('Your session has ended. Sign in again.');
  if (!res.ok) {
    const message = (data && data.error) || text.trim().slice(0, 200) || `HTTP ${res.status}`;
    throw new ApiError(res.status, message, data && data.field);
  }
  return data;
}

export const get = (path) => api('GET', path);
export const channelPath = (id) => `/channels/${encodeURIComponent(id)}`;
