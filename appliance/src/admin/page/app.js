/* Lockstep admin console — plain ES2020, no framework, no build step.
 *
 * Flow: GET /session decides between the login form and the console. In the
 * console an EventSource delivers `log` events and a `tick` once a second;
 * each tick refreshes the fast endpoints (status, swarm, channel, alignment)
 * and every fifth tick the slow ones (analysis, history). If the stream
 * fails we poll every 2 s and try the stream again later. Any 401 returns
 * to the login form.
 *
 * Everything the server sends is put into the page with textContent (via
 * el()), never as HTML.
 */
'use strict';

(() => {
  // ------------------------------------------------------------ constants

  const API = '/api/v1';
  const CSRF_STORAGE_KEY = 'lockstep.csrf';
  const ALIGNMENT_LIMIT = 12;
  const ANALYSIS_LIMIT = 120;
  const SLOW_EVERY_TICKS = 5;
  const POLL_INTERVAL_MS = 2000;
  const SLOW_EVERY_POLLS = 3; // ≈ every 6 s while polling
  const SSE_RETRY_MS = 15000;
  const MAX_EVENTS = 500;
  const BITRATE_MIN_KBPS = 50;
  const BITRATE_MAX_KBPS = 100000;
  const MEASURED_OVERSHOOT = 1.25; // measured above current × this → amber
  const HLS_RETRY_MS = 3000;
  const HLS_MIME = 'application/vnd.apple.mpegurl';
  const TOAST_MS = 6000;
  const SHORT_HASH_LEN = 8;
  const ALL_TRACKS = '*';
  const DASH = '—';
  const DELETE_CONFIRM_MS = 5000;  // how long Delete waits for its confirming click

  const NODE_COLOURS = ['#5aa9ff', '#b48cff', '#3cc8c8', '#ff7eb6', '#d8c27a', '#8fa3bf', '#ff9d76', '#7fd1a8'];

  // Clock states (docs/time.md): freerun, locking, locked, holdover.
  const CLOCK_TONE = { locked: 'ok', locking: 'warn', holdover: 'warn', freerun: 'bad' };

  const EVENT_TONE = {
    election: 'info', failover: 'warn', 'node-down': 'bad', 'node-up': 'ok',
    isolated: 'bad', rejoined: 'ok', ladder: 'info', channel: 'neutral', config: 'info',
    error: 'bad', clock: 'warn',
  };

  // ------------------------------------------------------------ state

  const state = {
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

  const $ = (id) => document.getElementById(id);

  /** Creates an element. props: class, text, dataset, style, on<event>, or attributes. */
  function el(tag, props, ...children) {
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

  function setPill(id, tone, text, title) {
    const pill = $(id);
    pill.className = `pill tone-${tone}`;
    pill.textContent = text;
    pill.title = title || '';
  }

  function toast(message, tone = 'info') {
    const box = el('div', { class: `toast tone-${tone}`, role: 'status', text: message });
    $('toasts').append(box);
    setTimeout(() => box.remove(), TOAST_MS);
  }

  // ------------------------------------------------------------ formatting

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString('en-US') : DASH);
  // Frame numbers and segment indices are identifiers: no digit grouping.
  const fmtId = (v) => (isNum(v) ? String(Math.round(v)) : DASH);
  const fmtKbps = (v) => (isNum(v) ? `${fmtInt(v)} kbit/s` : DASH);
  const fmtPct = (v) => (isNum(v) ? `${Math.round(v * 100)}%` : DASH);
  const fmtFixed = (v, digits) => (isNum(v) ? v.toFixed(digits) : DASH);

  function fmtMs(v) {
    if (!isNum(v)) return DASH;
    return Math.abs(v) < 10 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
  }

  /** Nanoseconds to a short human value: 850 ns, 1.2 µs, 3.4 ms, 1.20 s. */
  function fmtNs(ns) {
    if (!isNum(ns)) return DASH;
    const a = Math.abs(ns);
    if (a < 1e3) return `${Math.round(ns)} ns`;
    if (a < 1e6) return `${(ns / 1e3).toFixed(1)} µs`;
    if (a < 1e9) return `${(ns / 1e6).toFixed(1)} ms`;
    return `${(ns / 1e9).toFixed(2)} s`;
  }

  function fmtDuration(seconds) {
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

  function fmtClock(ms) {
    if (!isNum(ms)) return DASH;
    return new Date(ms).toLocaleTimeString('en-GB', { hour12: false });
  }

  // ------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, message, field) {
      super(message);
      this.status = status;
      this.field = field || null;
    }
  }

  async function readJson(res) {
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
  async function api(method, path, body, { authRedirect = true } = {}) {
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

  const get = (path) => api('GET', path);
  const channelPath = (id) => `/channels/${encodeURIComponent(id)}`;

  // ------------------------------------------------------------ session

  async function boot() {
    bindHandlers();
    try {
      const session = await api('GET', '/session', undefined, { authRedirect: false });
      state.csrf = (session && session.csrf_token) || sessionStorage.getItem(CSRF_STORAGE_KEY);
      enterApp();
    } catch (err) {
      showLogin(err.status === 401 ? '' : `Cannot check the session: ${err.message}`);
    }
  }

  function showLogin(message) {
    $('boot').hidden = true;
    $('app').hidden = true;
    $('login-view').hidden = false;
    $('login-error').textContent = message || '';
    $('password').focus();
  }

  async function onLoginSubmit(ev) {
    ev.preventDefault();
    const input = $('password');
    const button = $('login');
    if (!input.value) {
      $('login-error').textContent = 'Enter the password.';
      return;
    }
    button.disabled = true;
    $('login-error').textContent = '';
    try {
      const res = await api('POST', '/login', { password: input.value }, { authRedirect: false });
      state.csrf = res && res.csrf_token;
      if (state.csrf) sessionStorage.setItem(CSRF_STORAGE_KEY, state.csrf);
      input.value = '';
      enterApp();
    } catch (err) {
      $('login-error').textContent = err.message;
      input.select();
    } finally {
      button.disabled = false;
    }
  }

  function enterApp() {
    state.gen += 1;
    state.inApp = true;
    resetView();
    $('boot').hidden = true;
    $('login-view').hidden = true;
    $('app').hidden = false;
    refreshFast().then(refreshSlow);
    loadEvents(0);
    openStream();
  }

  /** Leaves the console (logout, expiry, any 401) and shows the login form. */
  function endSession(message) {
    if (!state.inApp) return;
    state.inApp = false;
    state.gen += 1;
    closeStream();
    stopPolling();
    clearTimeout(state.sseRetryTimer);
    state.sseRetryTimer = null;
    stopPreview();
    state.csrf = null;
    sessionStorage.removeItem(CSRF_STORAGE_KEY);
    showLogin(message);
  }

  async function onLogout() {
    try {
      await api('POST', '/logout');
    } catch (_) {
      // Leaving anyway: the cookie is useless to us without the token.
    }
    endSession('');
  }

  /** Clears everything shown for the previous session. */
  function resetView() {
    Object.assign(state, {
      status: null, swarm: null, channel: null, channelId: null, channels: [],
      analysis: [], history: [], lastEventId: 0, ticks: 0, pollCount: 0,
    });
    state.events.clear();
    state.localPending.clear();
    state.renditionRows.clear();
    $('members').replaceChildren();
    $('renditions').replaceChildren();
    $('alignment').replaceChildren();
    $('events').replaceChildren();
    $('channel-stats').replaceChildren();
    $('channel-list').replaceChildren();
    renderCharts();
  }

  // ------------------------------------------------------------ live updates

  function openStream() {
    closeStream();
    if (!window.EventSource) {
      startPolling();
      return;
    }
    const es = new EventSource(API + '/events/stream', { withCredentials: true });
    state.es = es;
    state.ticks = 0;
    es.addEventListener('open', () => {
      if (state.es !== es) return;
      stopPolling();
      setMode('live');
      loadEvents(state.lastEventId); // catch up on anything missed while away
    });
    es.addEventListener('tick', () => {
      if (state.es !== es) return;
      if (state.mode !== 'live') setMode('live');
      state.ticks += 1;
      refreshFast();
      if (state.ticks % SLOW_EVERY_TICKS === 0) refreshSlow();
    });
    es.addEventListener('log', (msg) => {
      try {
        addEvents([JSON.parse(msg.data)]);
      } catch (_) {
        // A malformed event is not worth breaking the stream for.
      }
    });
    es.onerror = () => {
      if (state.es !== es) return;
      closeStream();
      startPolling();
      scheduleStreamRetry();
    };
  }

  function closeStream() {
    if (state.es) state.es.close();
    state.es = null;
  }

  function scheduleStreamRetry() {
    clearTimeout(state.sseRetryTimer);
    state.sseRetryTimer = setTimeout(() => {
      state.sseRetryTimer = null;
      if (state.inApp) openStream();
    }, SSE_RETRY_MS);
  }

  function startPolling() {
    if (state.pollTimer) return;
    setMode('polling');
    state.pollTimer = setInterval(pollOnce, POLL_INTERVAL_MS);
  }

  function stopPolling() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  function pollOnce() {
    state.pollCount += 1;
    refreshFast();
    loadEvents(state.lastEventId);
    if (state.pollCount % SLOW_EVERY_POLLS === 0) refreshSlow();
  }

  function setMode(mode) {
    state.mode = mode;
    const look = {
      live: ['ok', 'Live', 'Live updates over the event stream'],
      polling: ['warn', 'Polling', `Event stream unavailable: polling every ${POLL_INTERVAL_MS / 1000} s`],
      offline: ['bad', 'Offline', 'Cannot reach the appliance; the data shown is stale'],
      connecting: ['neutral', 'Connecting', ''],
    }[mode];
    setPill('conn-pill', look[0], look[1], look[2]);
    document.body.classList.toggle('is-offline', mode === 'offline');
  }

  /** Tracks reachability from the outcome of a batch of requests. */
  function noteReachability(results) {
    const failed = results.filter((r) => r.status === 'rejected');
    const unreachable = failed.length === results.length && failed.every((r) => r.reason.status === 0);
    if (unreachable) {
      if (state.mode !== 'offline') setMode('offline');
    } else if (state.mode === 'offline') {
      setMode(state.es ? 'live' : 'polling');
    }
  }

  function reportFailure(what, result) {
    if (result.status === 'rejected' && result.reason.status !== 0 && result.reason.status !== 401) {
      console.warn(`lockstep: ${what}: ${result.reason.message}`);
    }
  }

  // ------------------------------------------------------------ refresh

  /** Status, swarm, channel and alignment, in parallel. Skips if one is in flight. */
  async function refreshFast() {
    if (state.fastBusy || !state.inApp) return;
    state.fastBusy = true;
    const gen = state.gen;
    const seq = state.actionSeq;
    try {
      const id = state.channelId;
      const results = await Promise.allSettled([
        get('/status'),
        get('/swarm'),
        id ? get(channelPath(id)) : Promise.resolve(null),
        get(`/swarm/alignment?limit=${ALIGNMENT_LIMIT}${id ? `&channel=${encodeURIComponent(id)}` : ''}`),
        get('/channels'),
        get(`/swarm/lockstep${id ? `?channel=${encodeURIComponent(id)}` : ''}`),
      ]);
      if (gen !== state.gen) return;
      noteReachability(results);
      const [status, swarm, channel, alignment, channels, lockstep] = results;
      if (lockstep.status === 'fulfilled' && lockstep.value) renderLockstep(lockstep.value);
      if (channels.status === 'fulfilled' && Array.isArray(channels.value)) renderChannelList(channels.value);
      // A start/stop finished while these were in flight: their running
      // flags are older than what we know; skip them rather than flicker.
      const stale = seq !== state.actionSeq;
      if (status.status === 'fulfilled' && status.value && !stale) renderStatus(status.value);
      if (swarm.status === 'fulfilled' && swarm.value) state.swarm = swarm.value;
      if (swarm.status === 'fulfilled' || status.status === 'fulfilled') renderSwarm();
      if (channel.status === 'fulfilled' && channel.value && !stale) renderChannel(channel.value);
      if (alignment.status === 'fulfilled' && alignment.value) renderAlignment(alignment.value);
      [['status', status], ['swarm', swarm], ['channel', channel], ['alignment', alignment]]
        .forEach(([what, r]) => reportFailure(what, r));
      // First round: the channel id only became known from the status.
      if (!id) await discoverChannel(gen);
    } finally {
      state.fastBusy = false;
    }
  }

  async function discoverChannel(gen) {
    let id = state.status && state.status.channel && state.status.channel.id;
    try {
      if (!id) {
        const list = await get('/channels');
        id = Array.isArray(list) && list.length ? list[0].id : null;
      }
      if (!id || gen !== state.gen) return;
      state.channelId = id;
      const channel = await get(channelPath(id));
      if (gen === state.gen && channel) renderChannel(channel);
      if (gen === state.gen) loadConfig();
    } catch (err) {
      if (err.status !== 401) console.warn(`lockstep: channel: ${err.message}`);
    }
  }

  async function refreshChannel() {
    if (!state.channelId) return;
    const gen = state.gen;
    try {
      const channel = await get(channelPath(state.channelId));
      if (gen === state.gen && channel) renderChannel(channel);
    } catch (_) {
      // The next tick will try again.
    }
  }

  /** Analysis and history, in parallel. */
  async function refreshSlow() {
    if (state.slowBusy || !state.inApp) return;
    state.slowBusy = true;
    const gen = state.gen;
    try {
      const [analysis, history] = await Promise.allSettled([
        get(`/analysis?limit=${ANALYSIS_LIMIT}${state.channelId ? `&channel=${encodeURIComponent(state.channelId)}` : ''}`),
        get('/history'),
      ]);
      if (gen !== state.gen) return;
      if (analysis.status === 'fulfilled' && Array.isArray(analysis.value)) state.analysis = analysis.value;
      if (history.status === 'fulfilled' && history.value) state.history = history.value.samples || [];
      reportFailure('analysis', analysis);
      reportFailure('history', history);
      renderCharts();
    } finally {
      state.slowBusy = false;
    }
  }

  async function loadEvents(since) {
    const gen = state.gen;
    try {
      const list = await get(`/events?since=${encodeURIComponent(since)}`);
      if (gen === state.gen && Array.isArray(list)) addEvents(list);
    } catch (_) {
      // Polling or the stream will bring them later.
    }
  }

  // ------------------------------------------------------------ status + top bar

  function clockTone(clock) {
    if (!clock) return 'neutral';
    const tone = CLOCK_TONE[clock.state] || 'warn';
    return tone === 'ok' && clock.fallback ? 'warn' : tone;
  }

  function renderStatus(st) {
    state.status = st;
    $('appliance-id').textContent = st.appliance || DASH;
    const version = st.version ? `v${st.version}` : '';
    $('version').textContent = st.image_version ? `${version} · image ${st.image_version}` : version;

    const ch = st.channel;
    if (!ch) {
      setPill('channel-pill', 'neutral', 'No channel');
    } else if (!ch.running) {
      setPill('channel-pill', 'warn', `${ch.id} · stopped`, 'Channel is stopped');
    } else if (st.write_errors > 0) {
      setPill('channel-pill', 'warn', `${ch.id} · running`, `${st.write_errors} write errors`);
    } else {
      setPill('channel-pill', 'ok', `${ch.id} · running`, `Segment ${ch.segment}, frame ${ch.frame}`);
    }

    const clock = st.clock;
    if (clock) {
      const err = isNum(clock.error_ns) ? ` ±${fmtNs(clock.error_ns)}` : '';
      setPill('clock-pill', clockTone(clock), `Clock ${clock.state}${err}`, clockDetails(clock));
    }
    renderStats(st);
  }

  function clockDetails(c) {
    return [
      `source: ${c.source}${c.fallback ? ' (fallback)' : ''}`,
      `offset: ${fmtNs(c.offset_ns)}`,
      `frequency: ${fmtFixed(c.frequency_ppb, 1)} ppb`,
      c.holdover_s ? `holdover: ${fmtDuration(c.holdover_s)}` : null,
      c.grandmaster ? `grandmaster: ${c.grandmaster}` : null,
      c.last_error ? `last error: ${c.last_error}` : null,
    ].filter(Boolean).join('\n');
  }

  function stat(label, value, tone) {
    return el('span', { class: 'stat' },
      el('span', { class: 'stat-label', text: label }),
      el('span', { class: `stat-value${tone ? ` tone-${tone}-text` : ''}`, text: value }));
  }

  function renderStats(st) {
    const ch = st.channel || {};
    $('channel-stats').replaceChildren(
      stat('Frame', fmtId(ch.frame)),
      stat('Segment', fmtId(ch.segment)),
      stat('Encode', fmtMs(st.encode_latency_ms)),
      stat('Captured', fmtInt(st.frames_captured)),
      stat('Dropped', fmtInt(st.frames_dropped), st.frames_dropped > 0 ? 'warn' : null),
      stat('Write errors', fmtInt(st.write_errors), st.write_errors > 0 ? 'bad' : null),
      stat('Uptime', fmtDuration(st.uptime_s)));
  }

  // ------------------------------------------------------------ swarm

  /** Stable colour per node: the first sorted batch seen takes the palette in order. */
  function nodeColour(node) {
    if (!state.nodeColours.has(node)) {
      state.nodeColours.set(node, NODE_COLOURS[state.nodeColours.size % NODE_COLOURS.length]);
    }
    return state.nodeColours.get(node);
  }

  function knowNodes(nodes) {
    [...nodes].sort().forEach(nodeColour);
  }

  const swatch = (node) => el('span', { class: 'swatch', style: { background: nodeColour(node) } });

  /** The single appliance as a member, for a swarm that is disabled or unreadable. */
  function selfFromStatus(st) {
    return {
      node: st.appliance, self: true, alive: true, healthy: true, leader: false,
      weight: null, confidence: null,
      clock: st.clock ? { state: st.clock.state, error_ns: st.clock.error_ns } : null,
      load: null, latency_ms: null, frame: st.channel ? st.channel.frame : null,
      uptime_s: st.uptime_s, encode_latency_ms: st.encode_latency_ms,
    };
  }

  function renderSwarm() {
    const sw = state.swarm;
    const st = state.status;
    let members;
    let standalone = false;
    if (sw && sw.enabled !== false) {
      members = Array.isArray(sw.members) ? sw.members.slice() : [];
    } else {
      // Swarm disabled (or its view unreadable): show just this appliance.
      standalone = true;
      const self = sw && Array.isArray(sw.members) && sw.members.find((m) => m.self);
      members = self ? [self] : st ? [selfFromStatus(st)] : [];
    }
    members = members.map((m) => forChannel(m, state.channelId));
    members.sort((a, b) => String(a.node).localeCompare(String(b.node)));
    knowNodes([...(sw && sw.group) || [], ...members.map((m) => m.node)]);

    const leader = sw ? sw.leader : null;
    const body = $('members');
    if (!members.length) {
      body.replaceChildren(el('tr', null, el('td', { class: 'empty', colspan: 10, text: 'No members reported yet.' })));
    } else {
      body.replaceChildren(...members.map((m) => memberRow(m, leader, standalone)));
    }
    renderSwarmSummary(sw, members, standalone);
  }

  /**
   * A member with the figures of channel `id` (its weight, frame, timecode,
   * complexity and latency for that channel; none when it does not encode
   * it) instead of those of the appliance's first channel.
   */
  function forChannel(m, id) {
    if (!id || !Array.isArray(m.channels)) return m;
    const c = m.channels.find((x) => x.id === id);
    const pick = (k) => (c && k in c ? c[k] : null);
    return {
      ...m,
      weight: pick('weight'),
      frame: pick('frame'),
      timecode: pick('timecode'),
      complexity: pick('complexity'),
      encode_latency_ms: pick('encode_latency_ms'),
      deviation: pick('deviation'),
    };
  }

  /** A tag for a neighbour out of lockstep: its frame offset against this node. */
  function offsetTag(deviation) {
    const k = deviation && deviation.frame_offset;
    if (!isNum(k) || k === 0) return null;
    const d = deviation;
    return el('span', {
      class: 'tag bad',
      title: `numbers the same pictures ${Math.abs(k)} frame${Math.abs(k) === 1 ? '' : 's'} ${k > 0 ? 'ahead of' : 'behind'} this node; ${d.hash_disagreements} of ${d.hashes_compared} recent segment hashes differ`,
      text: `${k > 0 ? '+' : ''}${k} fr`,
    });
  }

  function memberHealth(m) {
    const alive = m.alive !== false;
    const healthy = alive && m.healthy !== false;
    if (!alive) return { healthy, tone: 'bad', text: 'down' };
    if (!healthy) return { healthy, tone: 'warn', text: 'degraded' };
    return { healthy, tone: 'ok', text: 'healthy' };
  }

  function memberRow(m, leader, standalone) {
    const health = memberHealth(m);
    const isLeader = m.leader === true || (leader != null && m.node === leader);
    const classes = ['member', m.self && 'is-self', !health.healthy && 'is-unhealthy', m.alive === false && 'is-down'];
    const load = m.load || {};
    const cpuTone = load.cpu > 0.95 ? 'bad' : load.cpu > 0.8 ? 'warn' : null;
    const title = [
      m.origin && `origin ${m.origin}`,
      isNum(m.state_age_ms) && `state ${fmtMs(m.state_age_ms)} old`,
      isNum(m.jitter_ms) && `jitter ${fmtMs(m.jitter_ms)}`,
      isNum(m.encode_latency_ms) && `encode latency ${fmtMs(m.encode_latency_ms)}`,
      isNum(load.process_cpu) && `process CPU ${fmtPct(load.process_cpu)}`,
      isNum(load.memory) && `memory ${fmtPct(load.memory)}`,
      isNum(m.complexity) && `complexity ${m.complexity.toFixed(2)}`,
    ].filter(Boolean).join(' · ');

    let role;
    if (isLeader) role = el('span', { class: 'role-leader', text: 'Leader' });
    else role = el('span', { class: 'role-member', text: standalone ? 'Standalone' : 'Member' });

    return el('tr', { class: classes.filter(Boolean).join(' '), title, dataset: { node: m.node, healthy: String(health.healthy) } },
      el('td', null, swatch(m.node), el('span', { class: 'node-id', text: m.node }),
        m.self ? el('span', { class: 'tag', text: 'self' }) : null,
        m.isolated ? el('span', { class: 'tag bad', text: 'isolated' }) : null),
      el('td', null, role),
      el('td', null,
        el('span', { class: `status tone-${health.tone}`, text: health.text }),
        m.recent_errors > 0 ? el('span', { class: 'tag bad', title: 'recent errors', text: `${m.recent_errors} err` }) : null),
      el('td', null, weightCell(m.weight)),
      el('td', { class: 'num', text: fmtPct(m.confidence) }),
      el('td', null, clockCell(m.clock)),
      el('td', { class: `num${cpuTone ? ` tone-${cpuTone}-text` : ''}`, text: fmtPct(load.cpu) }),
      el('td', { class: 'num', text: m.self && !isNum(m.latency_ms) ? DASH : fmtMs(m.latency_ms) }),
      el('td', { class: 'num', title: m.timecode || null }, fmtId(m.frame), offsetTag(m.deviation)),
      el('td', { class: 'num', text: fmtDuration(m.uptime_s) }));
  }

  function weightCell(weight) {
    if (!isNum(weight)) return DASH;
    const pct = Math.max(0, Math.min(1, weight)) * 100;
    return [
      el('span', { class: 'meter' }, el('span', { class: 'meter-fill', style: { width: `${pct}%`, display: 'block' } })),
      el('span', { text: weight.toFixed(2) }),
    ];
  }

  function clockCell(clock) {
    if (!clock) return DASH;
    const tone = clockTone(clock);
    return el('span', { class: `status tone-${tone}` },
      el('span', { text: clock.state || DASH }),
      isNum(clock.error_ns) ? el('span', { class: 'sub', text: `±${fmtNs(clock.error_ns)}` }) : null);
  }

  /** Dropped swarm packets: every counter except `accepted`. */
  function rejectedPackets(packets) {
    const entries = Object.entries(packets || {}).filter(([k, v]) => k !== 'accepted' && isNum(v) && v > 0);
    return {
      total: entries.reduce((sum, [, v]) => sum + v, 0),
      detail: entries.map(([k, v]) => `${k}: ${fmtInt(v)}`).join(', '),
    };
  }

  function renderSwarmSummary(sw, members, standalone) {
    const chips = [];
    const st = state.status;
    if (!sw && st && st.swarm && st.swarm.enabled) {
      chips.push(el('span', { class: 'chip tone-warn', text: 'swarm view unavailable' }));
    } else if (standalone) {
      chips.push(el('span', { class: 'chip', text: 'swarm disabled · single appliance' }));
    } else if (sw) {
      const healthy = members.filter((m) => memberHealth(m).healthy).length;
      const tone = healthy === members.length ? 'ok' : healthy === 0 ? 'bad' : 'warn';
      chips.push(el('span', { class: 'chip', text: sw.leader ? `leader ${sw.leader}` : 'no leader' }));
      chips.push(el('span', { class: `chip tone-${tone}`, text: `${healthy}/${members.length} healthy` }));
      if (sw.isolated) chips.push(el('span', { class: 'chip tone-bad', text: 'isolated from the group' }));
      const rejected = rejectedPackets(sw.packets);
      if (rejected.total > 0) {
        chips.push(el('span', { class: 'chip tone-warn', title: rejected.detail, text: `${fmtInt(rejected.total)} packets rejected` }));
      }
    }
    $('swarm-summary').replaceChildren(...chips);
  }

  // ------------------------------------------------------------ channel list

  /**
   * The appliance's channels, one row each: picking one shows it in the
   * channel, preview, chart and configuration panels; any but the first
   * can be deleted (two clicks: the first one asks).
   */
  function renderChannelList(list) {
    state.channels = list;
    const selected = state.channelId;
    // The channel shown was deleted (here or elsewhere): show the first.
    if (selected && list.length && !list.some((c) => c.id === selected)) selectChannel(list[0].id);
    $('channels-note').textContent = list.length === 1 ? '1 channel' : `${list.length} channels`;
    const body = $('channel-list');
    const rows = list.map((c) => {
      const tone = c.running ? 'ok' : c.error ? 'bad' : 'neutral';
      const words = c.running ? 'running' : c.error ? `stopped: ${c.error}` : 'stopped';
      const old = body.querySelector(`tr[data-channel="${CSS.escape(c.id)}"]`);
      const armed = old && old.querySelector('.delete.armed');
      return el('tr', { dataset: { channel: c.id, running: String(!!c.running) }, class: c.id === state.channelId ? 'selected' : null },
        el('td', null,
          el('button', { type: 'button', class: 'pick', text: c.id, title: `Show ${c.id}`, 'aria-pressed': String(c.id === state.channelId), onclick: () => selectChannel(c.id) }),
          c.first ? el('span', { class: 'panel-note', text: c.swarm ? ' first · swarm' : ' first' }) : null),
        el('td', { class: `state tone-${tone}`, text: words }),
        el('td', { class: 'num', text: c.running && isNum(c.current_segment) ? fmtInt(c.current_segment) : DASH }),
        el('td', null, c.first ? null : el('button', {
          type: 'button', class: `btn small danger delete${armed ? ' armed' : ''}`, text: armed ? 'Confirm delete' : 'Delete',
          title: 'Stops the channel and removes it; its segments stay on disk',
          onclick: (ev) => deleteChannel(c.id, ev.currentTarget),
        })));
    });
    body.replaceChildren(...rows);
  }

  function selectChannel(id) {
    if (!id || id === state.channelId) return;
    state.channelId = id;
    state.channel = null;
    state.config = null;
    state.analysis = [];
    state.localPending.clear();
    state.renditionRows.clear();
    $('renditions').replaceChildren();
    document.querySelectorAll('#channel-list tr').forEach((tr) => {
      const on = tr.dataset.channel === id;
      tr.classList.toggle('selected', on);
      const pick = tr.querySelector('.pick');
      if (pick) pick.setAttribute('aria-pressed', String(on));
    });
    refreshChannel();
    loadConfig();
    refreshSlow();
  }

  async function deleteChannel(id, button) {
    if (!button.classList.contains('armed')) {
      button.classList.add('armed');
      button.textContent = 'Confirm delete';
      // Unconfirmed, the button goes back to Delete (rows are redrawn each
      // tick, so look it up again).
      setTimeout(() => {
        const now = document.querySelector(`#channel-list tr[data-channel="${CSS.escape(id)}"] .delete`);
        if (now && !now.disabled) {
          now.classList.remove('armed');
          now.textContent = 'Delete';
        }
      }, DELETE_CONFIRM_MS);
      return;
    }
    button.disabled = true;
    try {
      const res = await api('DELETE', channelPath(id));
      toast(`Channel ${id} deleted; its segments stay on disk.${savedText(res && res.saved)}`, 'ok');
      state.channels = state.channels.filter((c) => c.id !== id);
      renderChannelList(state.channels);
    } catch (err) {
      if (err.status !== 401) toast(`Could not delete ${id}: ${err.message}`, 'bad');
      button.disabled = false;
    }
  }

  function showNewChannelFields() {
    const kind = $('new-kind').value;
    document.querySelectorAll('#new-channel [data-new-kinds]').forEach((label) => {
      label.hidden = !label.dataset.newKinds.split(' ').includes(kind);
    });
  }

  function toggleNewChannel(open) {
    const form = $('new-channel');
    form.hidden = !open;
    $('channel-new').disabled = open;
    setNewMessage('', '');
    if (open) $('new-id').focus();
  }

  function setNewMessage(kind, text) {
    const m = $('new-message');
    m.className = `cfg-message ${kind}`;
    m.textContent = text;
  }

  /** `360p:800, 180p:250` → renditions; the height comes from the name. */
  function parseLadder(text) {
    return text.split(',').map((part) => part.trim()).filter(Boolean).map((part) => {
      const [name, kbps] = part.split(':').map((x) => x.trim());
      const height = /^(\d+)p$/.exec(name || '');
      return { name: name || '', height: height ? Number(height[1]) : null, bitrate_kbps: numberOrNull(kbps || '') };
    });
  }

  function newChannelBody() {
    const kind = $('new-kind').value;
    const source = { kind };
    if (kind === 'test' || kind === 'v4l2') {
      source.width = numberOrNull($('new-width').value);
      source.height = numberOrNull($('new-height').value);
    }
    if (kind === 'test') source.fps = $('new-fps').value.trim();
    if (kind === 'file') Object.assign(source, { path: $('new-path').value.trim(), loop: $('new-loop').checked });
    if (kind === 'v4l2') source.device = $('new-device').value.trim();
    const channel = { id: $('new-id').value.trim(), segment_seconds: numberOrNull($('new-seconds').value) };
    // A number left empty keeps the default.
    for (const o of [source, channel]) Object.keys(o).forEach((k) => { if (o[k] === null) delete o[k]; });
    return {
      channel,
      source,
      audio: { enabled: $('new-audio').checked },
      renditions: parseLadder($('new-ladder').value),
      start: $('new-start').checked,
    };
  }

  async function createChannel(ev) {
    ev.preventDefault();
    document.querySelectorAll('#new-channel .invalid').forEach((n) => n.classList.remove('invalid'));
    const button = $('new-create');
    button.disabled = true;
    setNewMessage('info', 'Creating…');
    try {
      const ch = await api('POST', '/channels', newChannelBody());
      toast(`Channel ${ch.id} created.${savedText(ch.saved)}`, 'ok');
      toggleNewChannel(false);
      state.channels = [...state.channels, ch];
      renderChannelList(state.channels);
      selectChannel(ch.id);
    } catch (err) {
      if (err.status === 401) return;
      setNewMessage('error', err.message);
      const field = err.field && err.field.replace(/^renditions\[\d+\]\..*/, 'renditions');
      const input = field && document.querySelector(`#new-channel [data-field="${field}"]`);
      if (input) {
        input.classList.add('invalid');
        input.focus();
      }
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------ channel

  function renderChannel(ch) {
    state.channel = ch;
    state.channelId = ch.id;
    $('channel-id').textContent = ch.id;
    const src = ch.source || {};
    $('channel-source').textContent = [
      src.description ? `Source: ${src.description}` : src.kind ? `Source: ${src.kind}` : null,
      src.live === false ? 'not live' : null,
      isNum(ch.segment_seconds) ? `${ch.segment_seconds} s segments` : null,
    ].filter(Boolean).join(' · ');
    renderInput(src);
    updateChannelButtons();
    renderRenditions(ch);
    const audio = ch.audio;
    $('channel-audio').textContent = audio
      ? (audio.enabled ? `Audio ${fmtKbps(audio.bitrate_kbps)}` : 'Audio off')
      : '';
    updatePreview(ch);
  }

  // A capture device's input: its fault now, and how frames reach the
  // encoders (in place = no copy).
  function renderInput(src) {
    const box = $('channel-input');
    const f = src.frames || {};
    const counts = [
      isNum(f.in_place) && f.in_place > 0 ? `${fmtInt(f.in_place)} frames in place` : null,
      isNum(f.converted) && f.converted > 0 ? `${fmtInt(f.converted)} converted` : null,
      isNum(f.copied) && f.copied > 0 ? `${fmtInt(f.copied)} repeated` : null,
      isNum(f.substituted) && f.substituted > 0 ? `${fmtInt(f.substituted)} black (no signal)` : null,
    ].filter(Boolean);
    if (!src.input_fault && counts.length === 0) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.classList.toggle('tone-bad', Boolean(src.input_fault));
    box.replaceChildren(
      ...(src.input_fault ? [el('strong', { text: `Input fault: ${src.input_fault}` })] : []),
      ...(counts.length ? [el('span', { text: counts.join(' · ') })] : []),
    );
  }

  function updateChannelButtons() {
    const running = state.channel ? state.channel.running : null;
    $('channel-start').disabled = state.channelBusy || running !== false;
    $('channel-stop').disabled = state.channelBusy || running !== true;
  }

  async function setChannelRunning(run) {
    const id = state.channelId;
    if (!id || state.channelBusy) return;
    state.channelBusy = true;
    updateChannelButtons();
    try {
      const res = await api('POST', `${channelPath(id)}/${run ? 'start' : 'stop'}`);
      const running = res && typeof res.running === 'boolean' ? res.running : run;
      if (state.channel) state.channel.running = running;
      if (state.status && state.status.channel) {
        state.status.channel.running = running;
        renderStatus(state.status);
      }
      state.actionSeq += 1;
      if (state.channel) updatePreview(state.channel);
    } catch (err) {
      if (err.status !== 401) toast(`Could not ${run ? 'start' : 'stop'} the channel: ${err.message}`, 'bad');
    } finally {
      state.channelBusy = false;
      updateChannelButtons();
    }
    refreshChannel();
  }

  // ------------------------------------------------------------ renditions

  function createRenditionRow(name) {
    const input = el('input', {
      class: 'bitrate', type: 'number', min: BITRATE_MIN_KBPS, max: BITRATE_MAX_KBPS, step: 1,
      inputmode: 'numeric', 'aria-label': `Bitrate for ${name} in kbit/s`,
    });
    const apply = el('button', { class: 'btn small apply', type: 'submit', text: 'Apply' });
    const msg = el('div', { class: 'row-msg', 'aria-live': 'polite' });
    const note = el('div', { class: 'row-note' });
    const form = el('form', { class: 'bitrate-form', novalidate: true }, input, apply);
    const cells = {
      name: el('td', { class: 'name' }, name, el('span', { class: 'size' })),
      configured: el('td', { class: 'num' }),
      current: el('td', { class: 'num' }),
      measured: el('td', { class: 'num measured' }),
      // Message and note sit on one line under the whole row (see app.css).
      control: el('td', { class: 'control' }, form, el('div', { class: 'row-extra' }, msg, note)),
    };
    const tr = el('tr', { dataset: { rendition: name } }, ...Object.values(cells));
    const row = { name, tr, cells, input, apply, msg, note };
    input.addEventListener('input', () => {
      input.dataset.dirty = '1';
      setRowMessage(row, '', '');
    });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      applyBitrate(row);
    });
    return row;
  }

  function renderRenditions(ch) {
    const list = Array.isArray(ch.renditions) ? ch.renditions : [];
    const body = $('renditions');
    const seen = new Set();
    list.forEach((r, i) => {
      seen.add(r.name);
      let row = state.renditionRows.get(r.name);
      if (!row) {
        row = createRenditionRow(r.name);
        state.renditionRows.set(r.name, row);
      }
      if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
      updateRenditionRow(row, r, ch);
    });
    for (const [name, row] of state.renditionRows) {
      if (!seen.has(name)) {
        row.tr.remove();
        state.renditionRows.delete(name);
      }
    }
  }

  function updateRenditionRow(row, r, ch) {
    const { cells } = row;
    cells.name.querySelector('.size').textContent = isNum(r.width) && isNum(r.height) ? `${r.width}×${r.height}` : DASH;
    cells.configured.textContent = fmtInt(r.configured_kbps);
    cells.current.textContent = fmtInt(r.bitrate_kbps);
    cells.current.classList.toggle('changed', r.bitrate_kbps !== r.configured_kbps);
    cells.current.title = r.bitrate_kbps !== r.configured_kbps ? 'changed at run time' : '';
    cells.measured.textContent = fmtInt(r.measured_kbps);
    const overshoot = isNum(r.measured_kbps) && isNum(r.bitrate_kbps) && r.measured_kbps > r.bitrate_kbps * MEASURED_OVERSHOOT;
    cells.measured.classList.toggle('tone-warn-text', overshoot);
    const recent = Array.isArray(r.recent) ? r.recent : [];
    cells.measured.title = recent.map((s) => `segment ${s.index}: ${fmtKbps(s.kbps)}`).join('\n');

    const pending = pendingFor(r, ch);
    setRowNote(row, pending ? pending.text : '');
    // Keep what the operator is typing; otherwise show the target bitrate.
    if (!row.input.dataset.dirty && document.activeElement !== row.input) {
      const target = pending ? pending.bitrate_kbps : r.bitrate_kbps;
      row.input.value = isNum(target) ? String(target) : '';
    }
  }

  function pendingText(bitrate, fromSegment, origin) {
    const when = isNum(fromSegment) ? `from segment ${fromSegment}` : 'from the next segment';
    const self = state.status && state.status.appliance;
    const who = origin && self && origin !== self ? ` (set on ${origin})` : '';
    return `${fmtKbps(bitrate)} applies ${when} on every node${who}`;
  }

  /**
   * The change still waiting to take effect, if any. The server's pending
   * list wins; our own 202 is remembered as well so that a refresh that was
   * already in flight when we patched does not hide the note too early.
   */
  function pendingFor(r, ch) {
    const list = Array.isArray(r.pending) ? r.pending : [];
    if (list.length) {
      const p = list.reduce((a, b) => ((b.revision || 0) >= (a.revision || 0) ? b : a));
      return { bitrate_kbps: p.bitrate_kbps, text: pendingText(p.bitrate_kbps, p.from_segment, p.origin) };
    }
    const local = state.localPending.get(r.name);
    if (!local) return null;
    const reached = isNum(local.from_segment) && isNum(ch.current_segment) && ch.current_segment >= local.from_segment;
    if (reached || r.bitrate_kbps === local.bitrate_kbps) {
      state.localPending.delete(r.name);
      return null;
    }
    return { bitrate_kbps: local.bitrate_kbps, text: pendingText(local.bitrate_kbps, local.from_segment, null) };
  }

  function setRowMessage(row, kind, text) {
    row.msg.className = `row-msg ${kind}`;
    row.msg.textContent = text;
    row.input.setAttribute('aria-invalid', kind === 'error' ? 'true' : 'false');
    fitRowExtra(row);
  }

  function setRowNote(row, text) {
    if (row.note.textContent !== text) row.note.textContent = text;
    fitRowExtra(row);
  }

  /** Makes room under the row for the message and note lines. */
  function fitRowExtra(row) {
    const lines = (row.msg.textContent ? 1 : 0) + (row.note.textContent ? 1 : 0);
    row.tr.style.setProperty('--extra-lines', String(lines));
  }

  function parseBitrate(raw) {
    const text = String(raw).trim();
    const value = Number(text);
    if (text === '' || !Number.isInteger(value) || value < BITRATE_MIN_KBPS || value > BITRATE_MAX_KBPS) return null;
    return value;
  }

  async function applyBitrate(row) {
    const value = parseBitrate(row.input.value);
    if (value == null) {
      setRowMessage(row, 'error', `Enter a whole number from ${BITRATE_MIN_KBPS} to ${BITRATE_MAX_KBPS} kbit/s.`);
      row.input.focus();
      return;
    }
    if (!state.channelId) return;
    row.apply.disabled = true;
    setRowMessage(row, 'info', 'Applying…');
    try {
      const path = `${channelPath(state.channelId)}/renditions/${encodeURIComponent(row.name)}`;
      const res = (await api('PATCH', path, { bitrate_kbps: value })) || {};
      const bitrate = isNum(res.bitrate_kbps) ? res.bitrate_kbps : value;
      state.localPending.set(row.name, { bitrate_kbps: bitrate, from_segment: res.from_segment });
      delete row.input.dataset.dirty;
      setRowMessage(row, '', '');
      setRowNote(row, pendingText(bitrate, res.from_segment, null));
      refreshChannel();
      loadConfig(); // the form shows bitrates in force: sent back, it must not undo this
    } catch (err) {
      if (err.status === 401) return;
      const prefix = err.field && err.field !== 'bitrate_kbps' ? `${err.field}: ` : '';
      setRowMessage(row, 'error', prefix + err.message);
    } finally {
      row.apply.disabled = false;
    }
  }

  // ------------------------------------------------------------ preview

  function showPreviewMessage(text) {
    const box = $('preview-msg');
    box.textContent = text;
    box.hidden = !text;
  }

  function joinUrl(origin, path) {
    if (/^https?:\/\//i.test(path)) return path;
    return origin.replace(/\/+$/, '') + (path.startsWith('/') ? path : `/${path}`);
  }

  function previewUrl(ch) {
    const pl = ch.playlists || {};
    const path = state.preview.source === 'own' ? pl.own || pl.combined : pl.combined || pl.own;
    return path ? joinUrl(ch.origin, path) : null;
  }

  function updateSourceToggle(ch) {
    const pl = (ch && ch.playlists) || {};
    const source = state.preview.source === 'own' || !pl.combined ? 'own' : 'combined';
    $('src-combined').disabled = !pl.combined;
    $('src-own').disabled = !pl.own;
    $('src-combined').setAttribute('aria-pressed', String(source === 'combined'));
    $('src-own').setAttribute('aria-pressed', String(source === 'own'));
  }

  /** Called on every channel refresh: starts, keeps or stops the player. */
  function updatePreview(ch) {
    const p = state.preview;
    updateSourceToggle(ch);
    if (!ch.origin) {
      stopPreview();
      $('preview-url').textContent = '';
      showPreviewMessage('Preview unavailable: no origin configured.');
      return;
    }
    const url = previewUrl(ch);
    $('preview-url').textContent = url || '';
    $('preview-url').title = url || '';
    if (!url) {
      stopPreview();
      showPreviewMessage('Preview unavailable: the channel has no playlist.');
      return;
    }
    if (!ch.running) {
      stopPreview();
      showPreviewMessage('Channel stopped.');
      return;
    }
    if (p.retryTimer) return; // a retry after an error is already scheduled
    if (p.active && p.url === url) return;
    startPlayer(url);
  }

  function startPlayer(url) {
    const p = state.preview;
    const video = $('preview');
    teardownPlayer();
    p.url = url;
    p.active = true;
    p.mediaRecovered = false;
    const Hls = window.Hls;
    if (Hls && typeof Hls.isSupported === 'function' && Hls.isSupported()) {
      showPreviewMessage('Connecting to the stream…');
      const hls = new Hls({ liveSyncDurationCount: 3 });
      p.hls = hls;
      hls.on(Hls.Events.MANIFEST_PARSED, () => playMuted(video));
      hls.on(Hls.Events.ERROR, (_event, data) => onHlsError(hls, data));
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType(HLS_MIME)) {
      showPreviewMessage('Connecting to the stream…');
      video.src = url;
      playMuted(video);
    } else {
      showPreviewMessage('This browser cannot play the preview: hls.js is not available and there is no native HLS support.');
    }
  }

  function playMuted(video) {
    video.muted = true;
    const attempt = video.play();
    if (attempt && attempt.catch) attempt.catch(() => { /* autoplay refused; controls remain */ });
  }

  function onHlsError(hls, data) {
    const p = state.preview;
    if (!data || !data.fatal || hls !== p.hls) return;
    if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR && !p.mediaRecovered) {
      p.mediaRecovered = true;
      hls.recoverMediaError();
      return;
    }
    scheduleRetry(`Stream unavailable (${data.details || data.type}); retrying…`);
  }

  /** Drops the player and tries the same URL again after a pause. */
  function scheduleRetry(message) {
    const p = state.preview;
    const url = p.url;
    teardownPlayer();
    showPreviewMessage(message);
    clearTimeout(p.retryTimer);
    p.retryTimer = setTimeout(() => {
      p.retryTimer = null;
      if (state.inApp && state.channel && state.channel.running && url) startPlayer(url);
    }, HLS_RETRY_MS);
  }

  function teardownPlayer() {
    const p = state.preview;
    const video = $('preview');
    if (p.hls) {
      p.hls.destroy();
      p.hls = null;
    }
    if (video.getAttribute('src')) {
      video.removeAttribute('src');
      video.load();
    }
    p.active = false;
  }

  function stopPreview() {
    const p = state.preview;
    clearTimeout(p.retryTimer);
    p.retryTimer = null;
    teardownPlayer();
    p.url = null;
  }

  function selectSource(source) {
    if (state.preview.source === source) return;
    state.preview.source = source;
    stopPreview();
    if (state.channel) updatePreview(state.channel);
  }

  // ------------------------------------------------------------ alignment

  /**
   * Rows come one per (segment, track), newest segment first. "All tracks"
   * groups a segment's tracks under one index cell; a track filter shows
   * one track per segment.
   */
  function renderAlignment(al) {
    state.alignment = al;
    const nodes = Array.isArray(al.nodes) ? al.nodes : [];
    const allRows = Array.isArray(al.rows) ? al.rows : [];
    knowNodes(nodes);
    renderTrackFilter(allRows);
    renderAlignmentSummary(allRows);
    const track = state.alignTrack;
    const rows = track === ALL_TRACKS ? allRows : allRows.filter((r) => r.track === track);

    const head = el('thead', null, el('tr', null,
      el('th', { class: 'num', text: 'Segment' }),
      el('th', { text: 'Track' }),
      el('th', { text: 'Match' }),
      nodes.map((n) => el('th', { class: 'node-col' }, swatch(n), n))));
    const body = el('tbody');
    if (!rows.length) {
      body.append(el('tr', null, el('td', { class: 'empty', colspan: nodes.length + 3, text: 'No segments compared yet.' })));
    }
    // Group consecutive rows of the same segment index.
    for (let i = 0; i < rows.length;) {
      let j = i + 1;
      while (j < rows.length && rows[j].index === rows[i].index) j += 1;
      const group = rows.slice(i, j);
      const groupDiffers = group.some((r) => r.agree === false);
      group.forEach((r, k) => body.append(alignmentRow(r, nodes, k === 0 ? j - i : 0, groupDiffers)));
      i = j;
    }
    $('alignment').replaceChildren(head, body);
  }

  /** span > 0: first row of a segment, whose index cell spans `span` rows. */
  function alignmentRow(r, nodes, span, groupDiffers) {
    const hashes = r.hashes || {};
    const chosenHash = r.chosen ? hashes[r.chosen] : null;
    const agree = r.agree !== false;
    const cells = nodes.map((n) => {
      const hash = hashes[n];
      const classes = ['hash'];
      if (!hash) classes.push('missing');
      if (n === r.chosen) classes.push('chosen');
      if (hash && chosenHash && hash !== chosenHash) classes.push('mismatch');
      const title = hash ? `${n}: ${hash}${n === r.chosen ? ' (chosen)' : ''}` : `${n}: no segment`;
      return el('td', { class: classes.join(' '), title, text: hash ? String(hash).slice(0, SHORT_HASH_LEN) : DASH });
    });
    const classes = [agree ? 'agree' : 'disagree', span > 0 && 'group-start'].filter(Boolean).join(' ');
    return el('tr', { class: classes, dataset: { index: r.index, track: r.track, agree: String(agree) } },
      span > 0 ? el('td', { class: `num index${groupDiffers ? ' tone-bad-text' : ''}`, rowspan: span, text: fmtId(r.index) }) : null,
      el('td', { class: 'track', text: r.track || DASH }),
      el('td', null, agree
        ? el('span', { class: 'status tone-ok', text: 'agree' })
        : el('span', { class: 'status tone-bad', text: 'differ' })),
      cells);
  }

  /** Track buttons; rebuilt only when the set of tracks changes. */
  function renderTrackFilter(rows) {
    const tracks = [...new Set(rows.map((r) => r.track).filter(Boolean))];
    if (state.alignTrack !== ALL_TRACKS && rows.length && !tracks.includes(state.alignTrack)) state.alignTrack = ALL_TRACKS;
    const box = $('alignment-tracks');
    const signature = `${tracks.join('\n')}|${state.alignTrack}`;
    if (box.dataset.signature === signature) return;
    box.dataset.signature = signature;
    box.hidden = tracks.length < 2;
    box.replaceChildren(...[ALL_TRACKS, ...tracks].map((t) => el('button', {
      type: 'button',
      'aria-pressed': String(t === state.alignTrack),
      text: t === ALL_TRACKS ? 'All tracks' : t,
      onclick: () => {
        state.alignTrack = t;
        if (state.alignment) renderAlignment(state.alignment);
      },
    })));
  }

  function renderAlignmentSummary(rows) {
    const differ = rows.filter((r) => r.agree === false).length;
    const chip = $('alignment-summary');
    if (!rows.length) {
      chip.hidden = true;
      return;
    }
    chip.hidden = false;
    chip.className = `chip tone-${differ ? 'bad' : 'ok'}`;
    chip.textContent = differ ? `${differ} of ${rows.length} differ` : 'all agree';
  }

  // ------------------------------------------------------------ lockstep

  /** Words for a resynchronisation correction. */
  function describeCorrection(c) {
    if (c && c.realign) return `realign ${c.realign.frames > 0 ? '+' : ''}${c.realign.frames} fr`;
    if (c && c.clock) return `clock ${fmtNs(c.clock.offset_ns)}, ${(c.clock.rate_ppb / 1000).toFixed(0)} ppm`;
    return 'correction';
  }

  /** Every node of the channel: position, deviation, clock lane, prediction, last action. */
  function renderLockstep(ls) {
    const nodes = Array.isArray(ls.nodes) ? ls.nodes : [];
    const body = $('lockstep');
    const chip = $('lockstep-summary');
    if (!nodes.length) {
      chip.hidden = true;
      body.replaceChildren(el('tr', null, el('td', { class: 'empty', colspan: 6, text: 'No swarm: nothing to keep in step with.' })));
      return;
    }
    const out = nodes.filter((n) => (isNum(n.frame_offset) && n.frame_offset !== 0) || (n.clock && n.clock.flagged));
    chip.hidden = false;
    chip.className = `chip tone-${out.length ? 'bad' : 'ok'}`;
    chip.textContent = out.length ? `${out.length} out of step` : 'all in step';
    body.replaceChildren(...nodes.map((n) => lockstepRow(n, ls)));
  }

  function lockstepRow(n, ls) {
    const frameMs = isNum(ls.frame_ms) ? ls.frame_ms : null;
    const c = n.clock;
    // Position on the lane: -1 frame at the left, +1 at the right.
    const at = (ms) => `${50 + Math.max(-1, Math.min(1, ms / frameMs)) * 50}%`;
    let lane = DASH;
    if (frameMs && (n.self || c)) {
      const offset = c ? c.offset_ms : 0;
      const ahead = c && isNum(ls.drift_horizon_s) && ls.drift_horizon_s > 0 ? offset + c.drift_ppm * ls.drift_horizon_s / 1000 : null;
      lane = el('div', { class: 'lane', title: c ? `clock ${fmtMs(c.offset_ms)} ± ${fmtMs(c.error_ms)}, ${c.drift_ppm.toFixed(1)} ppm` : 'this node' },
        el('span', { class: 'half lo' }), el('span', { class: 'half hi' }),
        isNum(ahead) ? el('span', { class: 'ahead', style: { left: at(ahead) } }) : null,
        el('span', { class: `dot${c && c.flagged ? ' flagged' : ''}`, style: { left: at(offset) } }));
    }
    let prediction = DASH;
    if (c) {
      if (c.half_frame_in_s === 0) prediction = el('span', { class: 'status tone-bad', text: 'half a frame off' });
      else if (isNum(c.half_frame_in_s)) prediction = el('span', { class: `status tone-${c.flagged ? 'warn' : 'ok'}`, text: `½ frame in ${fmtDuration(c.half_frame_in_s)}` });
      else prediction = el('span', { class: 'status tone-ok', text: 'steady' });
    } else if (n.self) {
      prediction = el('span', { class: 'sub', text: 'reference' });
    }
    const a = n.action;
    const actions = [];
    if (a && a.proposal) actions.push(`${describeCorrection(a.proposal.correction)} at ${fmtId(a.proposal.at_segment)}: ${a.outcome}`);
    if (n.reencoded && n.reencoded.segments > 0) actions.push(`${n.reencoded.segments} re-encoded (last ${fmtId(n.reencoded.last_segment)})`);
    const k = n.frame_offset;
    const offset = isNum(k)
      ? el('span', { class: `status tone-${k === 0 ? 'ok' : 'bad'}`, text: k === 0 ? 'in step' : `${k > 0 ? '+' : ''}${k} fr` })
      : DASH;
    const hashes = isNum(n.hash_disagreements) && n.hash_disagreements > 0
      ? el('span', { class: 'tag bad', title: `${n.hash_disagreements} of ${n.hashes_compared} recent segment hashes differ`, text: `${n.hash_disagreements} differ` })
      : null;
    return el('tr', { class: n.self ? 'is-self' : null, dataset: { node: n.node } },
      el('td', null, swatch(n.node), el('span', { class: 'node-id', text: n.node }), n.self ? el('span', { class: 'tag', text: 'self' }) : null),
      el('td', { class: 'num', title: `frame ${fmtId(n.frame)}`, text: fmtId(n.segment) }),
      el('td', { class: 'num' }, offset, hashes),
      el('td', null, lane),
      el('td', null, prediction),
      el('td', { class: 'action', text: actions.length ? actions.join(' · ') : DASH }));
  }

  // ------------------------------------------------------------ events

  const eventKey = (ev) => (ev.id != null ? `#${ev.id}` : `${ev.t_ms}|${ev.kind}|${ev.message}`);

  function addEvents(list) {
    let added = false;
    for (const ev of list) {
      if (!ev || typeof ev !== 'object') continue;
      const key = eventKey(ev);
      if (state.events.has(key)) continue;
      state.events.set(key, ev);
      if (isNum(ev.id) && ev.id > state.lastEventId) state.lastEventId = ev.id;
      added = true;
    }
    if (added) renderEvents();
  }

  function sortedEvents() {
    const order = (ev) => (isNum(ev.id) ? ev.id : Number.MAX_SAFE_INTEGER);
    return [...state.events.values()].sort((a, b) => order(b) - order(a) || (b.t_ms || 0) - (a.t_ms || 0));
  }

  function renderEvents() {
    let list = sortedEvents();
    if (list.length > MAX_EVENTS) {
      list.slice(MAX_EVENTS).forEach((ev) => state.events.delete(eventKey(ev)));
      list = list.slice(0, MAX_EVENTS);
    }
    $('events').replaceChildren(...list.map(eventItem));
    $('events-count').textContent = list.length ? `${list.length} shown` : '';
    if (!list.length) $('events').append(el('li', { class: 'empty', text: 'No events yet.' }));
  }

  function eventItem(ev) {
    const kind = ev.kind || 'event';
    const tone = EVENT_TONE[kind] || 'neutral';
    const message = ev.message || '';
    const showNode = ev.node && !message.includes(ev.node);
    const stamp = isNum(ev.t_ms) ? new Date(ev.t_ms) : null;
    return el('li', { class: `event tone-${tone}`, dataset: { kind } },
      el('time', { datetime: stamp ? stamp.toISOString() : null, title: stamp ? stamp.toLocaleString() : null, text: fmtClock(ev.t_ms) }),
      el('span', { class: 'badge', text: kind }),
      el('span', { class: 'msg' }, showNode ? el('span', { class: 'node', text: ev.node }) : null, message));
  }

  // ------------------------------------------------------------ charts

  const CHART_PAD = { l: 42, r: 10, t: 10, b: 20 };
  const CHART_GRID = 'rgba(255, 255, 255, 0.07)';
  const CHART_TEXT = '#8a93a4';
  const CHART_FONT = '11px system-ui, sans-serif';
  const BAR_COLOUR = '#4a8fe0';
  const BAR_HOVER = '#8cc4ff';
  const TOOLTIP_LINE = 15;

  /** Sizes the backing store to the element and the pixel ratio. */
  function prepareCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    const bw = Math.max(1, Math.round(w * dpr));
    const bh = Math.max(1, Math.round(h * dpr));
    if (canvas.width !== bw || canvas.height !== bh) {
      canvas.width = bw;
      canvas.height = bh;
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  /**
   * Draws a chart. spec: xs (x values, evenly spaced), series [{label,
   * colour, values}], yMax, fmtX, fmtY, bars, marker(i) → colour|null,
   * tooltip(i) → [{text, colour}], empty (text when there is no data).
   * The spec is kept on the canvas so hover and resize can redraw it.
   */
  function drawChart(canvas, spec) {
    canvas._spec = spec;
    const { ctx, w, h } = prepareCanvas(canvas);
    if (w < 40 || h < 40) return;
    ctx.font = CHART_FONT;
    ctx.textBaseline = 'middle';
    const n = spec.xs.length;
    if (!n) {
      ctx.fillStyle = CHART_TEXT;
      ctx.textAlign = 'center';
      ctx.fillText(spec.empty || 'No data yet', w / 2, h / 2);
      return;
    }
    const pw = w - CHART_PAD.l - CHART_PAD.r;
    const ph = h - CHART_PAD.t - CHART_PAD.b;
    const yMax = spec.yMax || 1;
    const yAt = (v) => CHART_PAD.t + ph - (Math.max(0, Math.min(v, yMax)) / yMax) * ph;
    const step = spec.bars ? pw / n : n > 1 ? pw / (n - 1) : 0;
    const xAt = spec.bars ? (i) => CHART_PAD.l + (i + 0.5) * step : (i) => CHART_PAD.l + (n > 1 ? i * step : pw / 2);
    const geo = { w, h, pw, ph, n, step, xAt, yAt, yMax };

    drawAxes(ctx, spec, geo);
    const hover = hoverIndex(canvas, spec, geo);
    if (spec.bars) drawBars(ctx, spec, geo, hover);
    else drawLines(ctx, spec, geo);
    if (hover != null) drawHover(ctx, spec, geo, hover);
  }

  function drawAxes(ctx, spec, geo) {
    const ticks = [0, geo.yMax / 2, geo.yMax];
    ctx.strokeStyle = CHART_GRID;
    ctx.lineWidth = 1;
    ctx.fillStyle = CHART_TEXT;
    ctx.textAlign = 'right';
    for (const t of ticks) {
      const y = Math.round(geo.yAt(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(CHART_PAD.l, y);
      ctx.lineTo(geo.w - CHART_PAD.r, y);
      ctx.stroke();
      ctx.fillText(spec.fmtY(t), CHART_PAD.l - 6, y);
    }
    // About five x labels, first and last pinned to the edges. The last
    // (newest) always shows; others are left out where they would overlap.
    const count = Math.min(5, geo.n);
    const y = geo.h - CHART_PAD.b / 2;
    const right = geo.w - CHART_PAD.r;
    const placed = [];
    for (let k = 0; k < count; k += 1) {
      const i = count === 1 ? geo.n - 1 : Math.round((k * (geo.n - 1)) / (count - 1));
      const text = spec.fmtX(spec.xs[i]);
      const width = ctx.measureText(text).width;
      let left = geo.xAt(i) - width / 2;
      if (count > 1 && k === 0) left = CHART_PAD.l;
      if (k === count - 1 && count > 1) left = right - width;
      placed.push({ text, left: Math.max(CHART_PAD.l, Math.min(left, right - width)), width });
    }
    const last = placed[placed.length - 1];
    let end = -Infinity;
    ctx.textAlign = 'left';
    placed.forEach((p, k) => {
      const isLast = k === placed.length - 1;
      if (!isLast && (p.left < end + 8 || p.left + p.width + 8 > last.left)) return;
      ctx.fillText(p.text, p.left, y);
      end = p.left + p.width;
    });
  }

  function drawBars(ctx, spec, geo, hover) {
    const values = spec.series[0] ? spec.series[0].values : [];
    const width = Math.max(1, geo.step - (geo.step > 4 ? 1 : 0));
    const base = geo.yAt(0);
    values.forEach((v, i) => {
      if (!isNum(v)) return;
      const top = geo.yAt(v);
      ctx.fillStyle = i === hover ? BAR_HOVER : BAR_COLOUR;
      ctx.fillRect(geo.xAt(i) - width / 2, top, width, Math.max(1, base - top));
      const mark = spec.marker && spec.marker(i);
      if (mark) {
        ctx.fillStyle = mark;
        ctx.beginPath();
        ctx.arc(geo.xAt(i), CHART_PAD.t + 2, Math.min(2.5, Math.max(1.5, width / 2)), 0, Math.PI * 2);
        ctx.fill();
      }
    });
  }

  function drawLines(ctx, spec, geo) {
    ctx.lineWidth = 1.75;
    ctx.lineJoin = 'round';
    for (const s of spec.series) {
      ctx.strokeStyle = s.colour;
      ctx.beginPath();
      let drawing = false;
      s.values.forEach((v, i) => {
        if (!isNum(v)) {
          drawing = false; // gap: the node had no sample
          return;
        }
        if (drawing) ctx.lineTo(geo.xAt(i), geo.yAt(v));
        else ctx.moveTo(geo.xAt(i), geo.yAt(v));
        drawing = true;
      });
      ctx.stroke();
    }
  }

  function hoverIndex(canvas, spec, geo) {
    const px = canvas._hoverX;
    if (px == null || px < CHART_PAD.l || px > geo.w - CHART_PAD.r) return null;
    const rel = px - CHART_PAD.l;
    const i = spec.bars ? Math.floor(rel / geo.step) : geo.n > 1 ? Math.round(rel / geo.step) : 0;
    return Math.max(0, Math.min(geo.n - 1, i));
  }

  function drawHover(ctx, spec, geo, i) {
    const x = geo.xAt(i);
    if (!spec.bars) {
      ctx.strokeStyle = 'rgba(255, 255, 255, 0.25)';
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, CHART_PAD.t);
      ctx.lineTo(Math.round(x) + 0.5, CHART_PAD.t + geo.ph);
      ctx.stroke();
    }
    const lines = spec.tooltip ? spec.tooltip(i) : [
      { text: spec.fmtX(spec.xs[i]) },
      ...spec.series.map((s) => ({ text: `${s.label}  ${isNum(s.values[i]) ? spec.fmtY(s.values[i]) : DASH}`, colour: s.colour })),
    ];
    drawTooltip(ctx, geo, x, lines);
  }

  function drawTooltip(ctx, geo, x, lines) {
    const pad = 6;
    ctx.font = CHART_FONT;
    const textWidth = Math.max(...lines.map((l) => ctx.measureText(l.text).width + (l.colour ? 12 : 0)));
    const bw = textWidth + pad * 2;
    const bh = lines.length * TOOLTIP_LINE + pad * 2 - 3;
    let bx = x + 12;
    if (bx + bw > geo.w - 2) bx = x - 12 - bw;
    bx = Math.max(2, bx);
    const by = 2;
    ctx.fillStyle = 'rgba(13, 15, 19, 0.94)';
    ctx.strokeStyle = '#3a4150';
    ctx.lineWidth = 1;
    ctx.fillRect(bx, by, bw, bh);
    ctx.strokeRect(bx + 0.5, by + 0.5, bw - 1, bh - 1);
    ctx.textAlign = 'left';
    lines.forEach((line, k) => {
      const ty = by + pad + k * TOOLTIP_LINE + 5;
      let tx = bx + pad;
      if (line.colour) {
        ctx.fillStyle = line.colour;
        ctx.fillRect(tx, ty - 4, 8, 8);
        tx += 12;
      }
      ctx.fillStyle = k === 0 ? '#e4e7ec' : '#c3c8d1';
      ctx.fillText(line.text, tx, ty);
    });
  }

  function redraw(canvas) {
    if (canvas._spec) drawChart(canvas, canvas._spec);
  }

  /** Rounds a maximum up so axes read well: at least `floor`. */
  function niceMax(values, floor) {
    const max = Math.max(floor, ...values.filter(isNum));
    if (max <= floor) return floor;
    const mag = 10 ** Math.floor(Math.log10(max));
    return Math.ceil(max / mag) * mag;
  }

  function renderComplexityChart() {
    const rows = state.analysis;
    const values = rows.map((a) => a.complexity);
    drawChart($('chart-complexity'), {
      xs: rows.map((a) => a.index),
      series: [{ label: 'complexity', colour: BAR_COLOUR, values }],
      bars: true,
      yMax: niceMax(values, 1),
      fmtX: (x) => `#${x}`,
      fmtY: (v) => v.toFixed(1),
      empty: 'No analysed segments yet',
      marker: (i) => (rows[i].frames_skipped > 0 ? '#f2a93b' : rows[i].scene_cuts > 0 ? '#e4e7ec' : null),
      tooltip: (i) => {
        const a = rows[i];
        return [
          { text: `segment ${fmtId(a.index)}${a.timecode ? ` · ${a.timecode}` : ''}` },
          { text: `complexity ${fmtFixed(a.complexity, 2)}` },
          a.content ? { text: `content ${String(a.content).replace(/_/g, ' ')}` } : null,
          { text: `scene cuts ${fmtInt(a.scene_cuts)}` },
          a.frames_skipped > 0 ? { text: `frames skipped ${fmtInt(a.frames_skipped)}` } : null,
        ].filter(Boolean);
      },
    });
  }

  /** Nodes that appear anywhere in the history, sorted. */
  function historyNodes(samples) {
    const nodes = new Set();
    for (const s of samples) {
      Object.keys(s.weights || {}).forEach((n) => nodes.add(n));
      Object.keys(s.cpu || {}).forEach((n) => nodes.add(n));
    }
    return [...nodes].sort();
  }

  function renderHistoryCharts() {
    const samples = state.history;
    const nodes = historyNodes(samples);
    knowNodes(nodes);
    const xs = samples.map((s) => s.t_ms);
    const seriesOf = (key) => nodes.map((n) => ({
      label: n,
      colour: nodeColour(n),
      values: samples.map((s) => (s[key] ? s[key][n] : undefined)),
    }));
    const weights = seriesOf('weights');
    const cpu = seriesOf('cpu');
    const flat = (series) => series.flatMap((s) => s.values);
    drawChart($('chart-weights'), {
      xs, series: weights, yMax: niceMax(flat(weights), 1),
      fmtX: fmtClock, fmtY: (v) => v.toFixed(2), empty: 'No history yet',
    });
    drawChart($('chart-cpu'), {
      xs, series: cpu, yMax: niceMax(flat(cpu), 1),
      fmtX: fmtClock, fmtY: fmtPct, empty: 'No history yet',
    });
    renderLegend(nodes);
  }

  function renderLegend(historyNodeIds) {
    const group = (state.swarm && state.swarm.group) || [];
    const nodes = [...new Set([...group, ...historyNodeIds])].sort();
    $('node-legend').replaceChildren(...nodes.map((n) =>
      el('span', { class: 'legend-item' }, swatch(n), n)));
  }

  function renderCharts() {
    renderComplexityChart();
    renderHistoryCharts();
  }

  function bindChartHover(canvas) {
    canvas.addEventListener('mousemove', (ev) => {
      canvas._hoverX = ev.offsetX;
      redraw(canvas);
    });
    canvas.addEventListener('mouseleave', () => {
      canvas._hoverX = null;
      redraw(canvas);
    });
  }

  // ------------------------------------------------------------ configuration form

  /*
   * GET /channels/{id}/config fills the form once (and on Reload or after an
   * apply), never on a tick, so edits in progress are not overwritten. Apply
   * sends the sections whole (the loaded values with the edits on top); the
   * server validates and names the key at fault, which is marked here.
   */

  async function loadConfig() {
    if (!state.channelId) return;
    const gen = state.gen;
    try {
      const cfg = await get(`${channelPath(state.channelId)}/config`);
      if (gen !== state.gen || !cfg) return;
      state.config = cfg;
      renderConfig(cfg);
    } catch (err) {
      if (err.status !== 401) setConfigMessage('error', `Configuration not loaded: ${err.message}`);
    }
  }

  function renderConfig(cfg) {
    const src = cfg.source || {};
    $('cfg-kind').value = src.kind || 'test';
    $('cfg-width').value = src.width ?? '';
    $('cfg-height').value = src.height ?? '';
    $('cfg-fps').value = src.fps ?? '';
    $('cfg-path').value = src.path ?? '';
    $('cfg-loop').checked = !!src.loop;
    $('cfg-device').value = src.device ?? '';
    $('cfg-input').value = src.input ?? '';
    $('cfg-pixel').value = src.pixel_format || 'auto';
    const audio = cfg.audio || {};
    $('cfg-audio').checked = !!audio.enabled;
    $('cfg-audio-kbps').value = audio.bitrate_kbps ?? '';
    $('cfg-audio-channels').value = String(audio.channels || 2);
    const encoder = cfg.encoder || {};
    $('cfg-backend').value = encoder.backend || 'auto';
    $('cfg-force-sw').checked = !!encoder.force_software;
    $('cfg-mode').value = (cfg.output && cfg.output.mode) || 'sliding';
    $('cfg-window').value = (cfg.output && cfg.output.window_segments) ?? '';
    // The output is the appliance's: changed on the first channel only.
    $('cfg-mode').disabled = cfg.first === false;
    $('cfg-window').disabled = cfg.first === false;
    const body = $('cfg-renditions');
    body.replaceChildren(...(cfg.renditions || []).map((r) => configRow(r, cfg.swarm)));
    $('cfg-add').disabled = !!cfg.swarm;
    $('cfg-ladder-note').textContent = cfg.swarm ? '(in a swarm, only bitrates change live)' : '';
    showSourceFields();
    clearFieldMarks();
    setConfigMessage(cfg.last_error ? 'error' : '', cfg.last_error ? `Last change rolled back: ${cfg.last_error}` : '');
  }

  function configRow(r, fixedShape) {
    const cell = (field, value, attrs) => {
      const input = el('input', Object.assign({ value: value ?? '', 'data-col': field }, attrs));
      if (fixedShape && field !== 'bitrate_kbps') input.disabled = true;
      return el('td', { class: attrs.type === 'number' ? 'num' : '' }, input);
    };
    const row = el('tr', { class: 'cfg-row' },
      cell('name', r.name, { type: 'text', size: 8, 'aria-label': 'Rendition name' }),
      cell('height', r.height, { type: 'number', min: 16, max: 2160, step: 2, 'aria-label': 'Height' }),
      cell('width', r.width, { type: 'number', min: 16, max: 3840, step: 2, placeholder: 'auto', 'aria-label': 'Width' }),
      cell('bitrate_kbps', r.bitrate_kbps, { type: 'number', min: BITRATE_MIN_KBPS, max: BITRATE_MAX_KBPS, 'aria-label': 'Bitrate' }));
    row._backend = r.backend ?? null;
    const remove = el('button', { type: 'button', class: 'btn', text: 'Remove', 'aria-label': `Remove ${r.name || 'rendition'}` });
    remove.disabled = !!fixedShape;
    remove.addEventListener('click', () => row.remove());
    row.append(el('td', {}, remove));
    return row;
  }

  function showSourceFields() {
    const kind = $('cfg-kind').value;
    document.querySelectorAll('#config-form [data-kinds]').forEach((label) => {
      label.hidden = !label.dataset.kinds.split(' ').includes(kind);
    });
  }

  const numberOrNull = (v) => (String(v).trim() === '' ? null : Number(v));

  /** The PATCH body: loaded sections with the form's values on top. */
  function configBody() {
    const loaded = state.config || {};
    const source = Object.assign({}, loaded.source, {
      kind: $('cfg-kind').value,
      width: numberOrNull($('cfg-width').value),
      height: numberOrNull($('cfg-height').value),
      fps: $('cfg-fps').value.trim(),
      path: $('cfg-path').value.trim() || null,
      loop: $('cfg-loop').checked,
      device: $('cfg-device').value.trim(),
      input: numberOrNull($('cfg-input').value),
      pixel_format: $('cfg-pixel').value,
    });
    // A width or height left empty keeps the default.
    ['width', 'height'].forEach((k) => { if (source[k] === null) delete source[k]; });
    const renditions = [...$('cfg-renditions').querySelectorAll('tr')].map((row) => {
      const value = (col) => row.querySelector(`[data-col="${col}"]`).value;
      const r = {
        name: value('name').trim(),
        height: numberOrNull(value('height')),
        width: numberOrNull(value('width')),
        bitrate_kbps: numberOrNull(value('bitrate_kbps')),
      };
      if (row._backend) r.backend = row._backend;
      return r;
    });
    const output = { mode: $('cfg-mode').value, window_segments: numberOrNull($('cfg-window').value) };
    const audio = Object.assign({}, loaded.audio, {
      enabled: $('cfg-audio').checked,
      bitrate_kbps: numberOrNull($('cfg-audio-kbps').value),
      channels: Number($('cfg-audio-channels').value),
    });
    const encoder = { backend: $('cfg-backend').value, force_software: $('cfg-force-sw').checked };
    // The output is the appliance's: it is changed on the first channel only.
    return loaded.first === false ? { source, audio, encoder, renditions } : { source, audio, encoder, renditions, output };
  }

  function clearFieldMarks() {
    document.querySelectorAll('#config-form .invalid').forEach((n) => n.classList.remove('invalid'));
  }

  /** Marks the input a server error names: `source.width`, `renditions[1].height`. */
  function markField(field) {
    if (!field) return;
    const ladder = /^renditions\[(\d+)\]\.(\w+)/.exec(field);
    let input = null;
    if (ladder) {
      const row = $('cfg-renditions').querySelectorAll('tr')[Number(ladder[1])];
      input = row && row.querySelector(`[data-col="${ladder[2]}"]`);
    } else {
      input = document.querySelector(`#config-form [data-field="${field}"]`);
    }
    if (input) {
      input.classList.add('invalid');
      input.focus();
    }
  }

  function setConfigMessage(kind, text) {
    const m = $('cfg-message');
    m.className = `cfg-message ${kind}`;
    m.textContent = text;
  }

  function appliedText(applied) {
    const from = applied && applied.from_segment;
    switch (applied && applied.how) {
      case 'handover': return `Applied: the new configuration takes over at segment ${from}.`;
      case 'live': return `Applied: new bitrates from segment ${from}.`;
      case 'reopen': return `Applied: the source reopens after segment ${from - 1}; the playlists continue after a short gap.`;
      case 'restart': return 'Applied by a restart of the channel.';
      case 'stored': return 'Stored: the channel uses it when it starts.';
      case 'unchanged': return 'Nothing changed.';
      default: return 'Applied.';
    }
  }

  // What became of the change in the configuration file (null: no file).
  function savedText(saved) {
    if (!saved) return ' Not saved: the daemon runs on embedded defaults, without a file.';
    if (saved.state === 'saved') return ` Saved to ${saved.file}.`;
    if (saved.state === 'error') return ` Not saved to the file: ${saved.error}`;
    return '';
  }

  async function applyConfig(ev) {
    ev.preventDefault();
    if (!state.channelId) return;
    clearFieldMarks();
    const button = $('cfg-apply');
    button.disabled = true;
    setConfigMessage('info', 'Applying…');
    try {
      const res = await api('PATCH', `${channelPath(state.channelId)}/config`, configBody());
      if (res && res.config) {
        state.config = res.config;
        renderConfig(res.config);
      }
      const saved = res ? res.saved : null;
      const kind = saved && saved.state === 'error' ? 'error' : 'ok';
      setConfigMessage(kind, appliedText(res && res.applied) + savedText(saved));
      refreshChannel();
    } catch (err) {
      if (err.status === 401) return;
      setConfigMessage('error', err.message);
      markField(err.field);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------ wiring

  function bindHandlers() {
    $('login-form').addEventListener('submit', onLoginSubmit);
    $('logout').addEventListener('click', onLogout);
    $('channel-start').addEventListener('click', () => setChannelRunning(true));
    $('channel-stop').addEventListener('click', () => setChannelRunning(false));
    $('src-combined').addEventListener('click', () => selectSource('combined'));
    $('src-own').addEventListener('click', () => selectSource('own'));
    $('config-form').addEventListener('submit', applyConfig);
    $('config-reload').addEventListener('click', loadConfig);
    $('cfg-kind').addEventListener('change', showSourceFields);
    $('channel-new').addEventListener('click', () => toggleNewChannel(true));
    $('new-cancel').addEventListener('click', () => toggleNewChannel(false));
    $('new-kind').addEventListener('change', showNewChannelFields);
    $('new-channel').addEventListener('submit', createChannel);
    $('cfg-add').addEventListener('click', () => {
      const row = configRow({ name: '', height: '', width: null, bitrate_kbps: '' }, false);
      $('cfg-renditions').append(row);
      row.querySelector('input').focus();
    });

    const video = $('preview');
    video.addEventListener('playing', () => showPreviewMessage(''));
    video.addEventListener('error', () => {
      // Native playback only; hls.js reports through its own events.
      if (!state.preview.hls && state.preview.active) scheduleRetry('Stream unavailable; retrying…');
    });

    const canvases = ['chart-complexity', 'chart-weights', 'chart-cpu'].map($);
    canvases.forEach(bindChartHover);
    if (window.ResizeObserver) {
      const observer = new ResizeObserver(() => canvases.forEach(redraw));
      canvases.forEach((c) => observer.observe(c));
    } else {
      window.addEventListener('resize', () => canvases.forEach(redraw));
    }
  }

  document.addEventListener('DOMContentLoaded', boot);
})();
