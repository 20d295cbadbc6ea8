/* Lockstep admin console — plain ES modules, no framework, no build step.
 *
 * One module per view (swarm.js, channels.js, renditions.js, preview.js,
 * alignment.js, chain.js, events.js, charts.js, settings.js, status.js), the shared
 * state, helpers and API client in core.js, the session in session.js, the
 * live updates and refresh in live.js; this module binds the handlers and
 * boots the page. The daemon serves them under /js/.
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
import { $, state } from './core.js';
import { boot, onLoginSubmit, onLogout } from './session.js';
import { createChannel, setChannelRunning, showNewChannelFields, toggleNewChannel } from './channels.js';
import { scheduleRetry, selectSource, showPreviewMessage } from './preview.js';
import { bindChartHover, redraw } from './charts.js';
import { applyConfig, configRow, loadConfig, showSourceFields } from './settings.js';

// ------------------------------------------------------------ wiring

export function bindHandlers() {
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
