/* Lockstep admin console: The event stream (log events and the once-a-second tick), polling when it fails, and the refresh of each view.
 */
import { $, ALIGNMENT_LIMIT, ANALYSIS_LIMIT, API, POLL_INTERVAL_MS, SLOW_EVERY_POLLS, SLOW_EVERY_TICKS, SSE_RETRY_MS, channelPath, get, setPill, state } from './core.js';
import { renderStatus } from './status.js';
import { renderSwarm } from './swarm.js';
import { renderChannel, renderChannelList } from './channels.js';
import { renderAlignment, renderLockstep } from './alignment.js';
import { renderChain } from './chain.js';
import { addEvents } from './events.js';
import { renderCharts } from './charts.js';
import { loadConfig } from './settings.js';

// ------------------------------------------------------------ live updates

export function openStream() {
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

export function closeStream() {
  if (state.es) state.es.close();
  state.es = null;
}

export function scheduleStreamRetry() {
  clearTimeout(state.sseRetryTimer);
  state.sseRetryTimer = setTimeout(() => {
    state.sseRetryTimer = null;
    if (state.inApp) openStream();
  }, SSE_RETRY_MS);
}

export function startPolling() {
  if (state.pollTimer) return;
  setMode('polling');
  state.pollTimer = setInterval(pollOnce, POLL_INTERVAL_MS);
}

export function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = null;
}

export function pollOnce() {
  state.pollCount += 1;
  refreshFast();
  loadEvents(state.lastEventId);
  if (state.pollCount % SLOW_EVERY_POLLS === 0) refreshSlow();
}

export function setMode(mode) {
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
export function noteReachability(results) {
  const failed = results.filter((r) => r.status === 'rejected');
  const unreachable = failed.length === results.length && failed.every((r) => r.reason.status === 0);
  if (unreachable) {
    if (state.mode !== 'offline') setMode('offline');
  } else if (state.mode === 'offline') {
    setMode(state.es ? 'live' : 'polling');
  }
}

export function reportFailure(what, result) {
  if (result.status === 'rejected' && result.reason.status !== 0 && result.reason.status !== 401) {
    console.warn(`lockstep: ${what}: ${result.reason.message}`);
  }
}

// ------------------------------------------------------------ refresh

/** Status, swarm, channel and alignment, in parallel. Skips if one is in flight. */
export async function refreshFast() {
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
      get(`/chain${id ? `?channel=${encodeURIComponent(id)}` : ''}`),
    ]);
    if (gen !== state.gen) return;
    noteReachability(results);
    const [status, swarm, channel, alignment, channels, lockstep, chain] = results;
    if (lockstep.status === 'fulfilled' && lockstep.value) renderLockstep(lockstep.value);
    if (chain.status === 'fulfilled' && chain.value) renderChain(chain.value);
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

export async function discoverChannel(gen) {
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

export async function refreshChannel() {
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
export async function refreshSlow() {
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

export async function loadEvents(since) {
  const gen = state.gen;
  try {
    const list = await get(`/events?since=${encodeURIComponent(since)}`);
    if (gen === state.gen && Array.isArray(list)) addEvents(list);
  } catch (_) {
    // Polling or the stream will bring them later.
  }
}
