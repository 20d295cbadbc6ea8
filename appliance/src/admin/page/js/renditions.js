/* Lockstep admin console: The ladder: renditions, live bitrate changes and measured rates.
 */
import { $, BITRATE_MAX_KBPS, BITRATE_MIN_KBPS, DASH, MEASURED_OVERSHOOT, api, channelPath, el, fmtInt, fmtKbps, isNum, state } from './core.js';
import { refreshChannel } from './live.js';
import { loadConfig } from './settings.js';

// ------------------------------------------------------------ renditions

export function createRenditionRow(name) {
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

export function renderRenditions(ch) {
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

export function updateRenditionRow(row, r, ch) {
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

export function pendingText(bitrate, fromSegment, origin) {
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
export function pendingFor(r, ch) {
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

export function setRowMessage(row, kind, text) {
  row.msg.className = `row-msg ${kind}`;
  row.msg.textContent = text;
  row.input.setAttribute('aria-invalid', kind === 'error' ? 'true' : 'false');
  fitRowExtra(row);
}

export function setRowNote(row, text) {
  if (row.note.textContent !== text) row.note.textContent = text;
  fitRowExtra(row);
}

/** Makes room under the row for the message and note lines. */
export function fitRowExtra(row) {
  const lines = (row.msg.textContent ? 1 : 0) + (row.note.textContent ? 1 : 0);
  row.tr.style.setProperty('--extra-lines', String(lines));
}

export function parseBitrate(raw) {
  const text = String(raw).trim();
  const value = Number(text);
  if (text === '' || !Number.isInteger(value) || value < BITRATE_MIN_KBPS || value > BITRATE_MAX_KBPS) return null;
  return value;
}

export async function applyBitrate(row) {
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
