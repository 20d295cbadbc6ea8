/* Lockstep admin console: The channel configuration form.
 */
import { $, BITRATE_MAX_KBPS, BITRATE_MIN_KBPS, api, channelPath, el, get, state } from './core.js';
import { refreshChannel } from './live.js';

// ------------------------------------------------------------ configuration form

/*
 * GET /channels/{id}/config fills the form once (and on Reload or after an
 * apply), never on a tick, so edits in progress are not overwritten. Apply
 * sends the sections whole (the loaded values with the edits on top); the
 * server validates and names the key at fault, which is marked here.
 */

export async function loadConfig() {
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

export function renderConfig(cfg) {
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

export function configRow(r, fixedShape) {
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

export function showSourceFields() {
  const kind = $('cfg-kind').value;
  document.querySelectorAll('#config-form [data-kinds]').forEach((label) => {
    label.hidden = !label.dataset.kinds.split(' ').includes(kind);
  });
}

export const numberOrNull = (v) => (String(v).trim() === '' ? null : Number(v));

/** The PATCH body: loaded sections with the form's values on top. */
export function configBody() {
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

export function clearFieldMarks() {
  document.querySelectorAll('#config-form .invalid').forEach((n) => n.classList.remove('invalid'));
}

/** Marks the input a server error names: `source.width`, `renditions[1].height`. */
export function markField(field) {
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

export function setConfigMessage(kind, text) {
  const m = $('cfg-message');
  m.className = `cfg-message ${kind}`;
  m.textContent = text;
}

export function appliedText(applied) {
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
export function savedText(saved) {
  if (!saved) return ' Not saved: the daemon runs on embedded defaults, without a file.';
  if (saved.state === 'saved') return ` Saved to ${saved.file}.`;
  if (saved.state === 'error') return ` Not saved to the file: ${saved.error}`;
  return '';
}

export async function applyConfig(ev) {
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
