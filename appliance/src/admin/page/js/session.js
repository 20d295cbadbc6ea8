/* Lockstep admin console: Login, logout and the session check that picks the login form or the console.
 */
import { $, CSRF_STORAGE_KEY, api, state } from './core.js';
import { closeStream, loadEvents, openStream, refreshFast, refreshSlow, stopPolling } from './live.js';
import { stopPreview } from './preview.js';
import { renderCharts } from './charts.js';
import { bindHandlers } from './main.js';

// ------------------------------------------------------------ session

export async function boot() {
  bindHandlers();
  try {
    const session = await api('GET', '/session', undefined, { authRedirect: false });
    state.csrf = (session && session.csrf_token) || sessionStorage.getItem(CSRF_STORAGE_KEY);
    enterApp();
  } catch (err) {
    showLogin(err.status === 401 ? '' : `Cannot check the session: ${err.message}`);
  }
}

export function showLogin(message) {
  $('boot').hidden = true;
  $('app').hidden = true;
  $('login-view').hidden = false;
  $('login-error').textContent = message || '';
  $('password').focus();
}

export async function onLoginSubmit(ev) {
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

export function enterApp() {
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
export function endSession(message) {
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

export async function onLogout() {
  try {
    await api('POST', '/logout');
  } catch (_) {
    // Leaving anyway: the cookie is useless to us without the token.
  }
  endSession('');
}

/** Clears everything shown for the previous session. */
export function resetView() {
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
