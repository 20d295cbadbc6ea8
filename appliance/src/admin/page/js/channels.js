/* Lockstep admin console: The channel list (create, delete) and the selected channel (start, stop).
 */
import { $, DASH, DELETE_CONFIRM_MS, api, channelPath, el, fmtInt, fmtKbps, isNum, state, toast } from './core.js';
import { refreshChannel, refreshSlow } from './live.js';
import { renderStatus } from './status.js';
import { renderRenditions } from './renditions.js';
import { updatePreview } from './preview.js';
import { loadConfig, numberOrNull, savedText } from './settings.js';

// ------------------------------------------------------------ channel list

/**
 * The appliance's channels, one row each: picking one shows it in the
 * channel, preview, chart and configuration panels; any but the first
 * can be deleted (two clicks: the first one asks).
 */
export function renderChannelList(list) {
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

export function selectChannel(id) {
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

export async function deleteChannel(id, button) {
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

export function showNewChannelFields() {
  const kind = $('new-kind').value;
  document.querySelectorAll('#new-channel [data-new-kinds]').forEach((label) => {
    label.hidden = !label.dataset.newKinds.split(' ').includes(kind);
  });
}

export function toggleNewChannel(open) {
  const form = $('new-channel');
  form.hidden = !open;
  $('channel-new').disabled = open;
  setNewMessage('', '');
  if (open) $('new-id').focus();
}

export function setNewMessage(kind, text) {
  const m = $('new-message');
  m.className = `cfg-message ${kind}`;
  m.textContent = text;
}

/** `360p:800, 180p:250` → renditions; the height comes from the name. */
export function parseLadder(text) {
  return text.split(',').map((part) => part.trim()).filter(Boolean).map((part) => {
    const [name, kbps] = part.split(':').map((x) => x.trim());
    const height = /^(\d+)p$/.exec(name || '');
    return { name: name || '', height: height ? Number(height[1]) : null, bitrate_kbps: numberOrNull(kbps || '') };
  });
}

export function newChannelBody() {
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

export async function createChannel(ev) {
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

export function renderChannel(ch) {
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
export function renderInput(src) {
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

export function updateChannelButtons() {
  const running = state.channel ? state.channel.running : null;
  $('channel-start').disabled = state.channelBusy || running !== false;
  $('channel-stop').disabled = state.channelBusy || running !== true;
}

export async function setChannelRunning(run) {
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
