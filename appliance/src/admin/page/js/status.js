/* Lockstep admin console: The top bar: node, clock, mode and the appliance status.
 */
import { $, CLOCK_TONE, DASH, el, fmtDuration, fmtFixed, fmtId, fmtInt, fmtMs, fmtNs, isNum, setPill, state } from './core.js';

// ------------------------------------------------------------ status + top bar

export function clockTone(clock) {
  if (!clock) return 'neutral';
  const tone = CLOCK_TONE[clock.state] || 'warn';
  return tone === 'ok' && clock.fallback ? 'warn' : tone;
}

export function renderStatus(st) {
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

export function clockDetails(c) {
  return [
    `source: ${c.source}${c.fallback ? ' (fallback)' : ''}`,
    `offset: ${fmtNs(c.offset_ns)}`,
    `frequency: ${fmtFixed(c.frequency_ppb, 1)} ppb`,
    c.holdover_s ? `holdover: ${fmtDuration(c.holdover_s)}` : null,
    c.grandmaster ? `grandmaster: ${c.grandmaster}` : null,
    c.last_error ? `last error: ${c.last_error}` : null,
  ].filter(Boolean).join('\n');
}

export function stat(label, value, tone) {
  return el('span', { class: 'stat' },
    el('span', { class: 'stat-label', text: label }),
    el('span', { class: `stat-value${tone ? ` tone-${tone}-text` : ''}`, text: value }));
}

export function renderStats(st) {
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
