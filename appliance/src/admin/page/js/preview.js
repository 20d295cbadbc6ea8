/* Lockstep admin console: The preview player (hls.js, or native HLS), combined or own output.
 */
import { $, HLS_MIME, HLS_RETRY_MS, state } from './core.js';

// ------------------------------------------------------------ preview

export function showPreviewMessage(text) {
  const box = $('preview-msg');
  box.textContent = text;
  box.hidden = !text;
}

export function joinUrl(origin, path) {
  if (/^https?:\/\//i.test(path)) return path;
  return origin.replace(/\/+$/, '') + (path.startsWith('/') ? path : `/${path}`);
}

export function previewUrl(ch) {
  const pl = ch.playlists || {};
  const path = state.preview.source === 'own' ? pl.own || pl.combined : pl.combined || pl.own;
  return path ? joinUrl(ch.origin, path) : null;
}

export function updateSourceToggle(ch) {
  const pl = (ch && ch.playlists) || {};
  const source = state.preview.source === 'own' || !pl.combined ? 'own' : 'combined';
  $('src-combined').disabled = !pl.combined;
  $('src-own').disabled = !pl.own;
  $('src-combined').setAttribute('aria-pressed', String(source === 'combined'));
  $('src-own').setAttribute('aria-pressed', String(source === 'own'));
}

/** Called on every channel refresh: starts, keeps or stops the player. */
export function updatePreview(ch) {
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

export function startPlayer(url) {
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

export function playMuted(video) {
  video.muted = true;
  const attempt = video.play();
  if (attempt && attempt.catch) attempt.catch(() => { /* autoplay refused; controls remain */ });
}

export function onHlsError(hls, data) {
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
export function scheduleRetry(message) {
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

export function teardownPlayer() {
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

export function stopPreview() {
  const p = state.preview;
  clearTimeout(p.retryTimer);
  p.retryTimer = null;
  teardownPlayer();
  p.url = null;
}

export function selectSource(source) {
  if (state.preview.source === source) return;
  state.preview.source = source;
  stopPreview();
  if (state.channel) updatePreview(state.channel);
}
