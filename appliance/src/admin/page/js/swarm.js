/* Lockstep admin console: The swarm table: members, roles, weights and health.
 */
import { $, DASH, NODE_COLOURS, el, fmtDuration, fmtId, fmtInt, fmtMs, fmtNs, fmtPct, isNum, state } from './core.js';
import { clockTone } from './status.js';

// ------------------------------------------------------------ swarm

/** Stable colour per node: the first sorted batch seen takes the palette in order. */
export function nodeColour(node) {
  if (!state.nodeColours.has(node)) {
    state.nodeColours.set(node, NODE_COLOURS[state.nodeColours.size % NODE_COLOURS.length]);
  }
  return state.nodeColours.get(node);
}

export function knowNodes(nodes) {
  [...nodes].sort().forEach(nodeColour);
}

export const swatch = (node) => el('span', { class: 'swatch', style: { background: nodeColour(node) } });

/** The single appliance as a member, for a swarm that is disabled or unreadable. */
export function selfFromStatus(st) {
  return {
    node: st.appliance, self: true, alive: true, healthy: true, leader: false,
    weight: null, confidence: null,
    clock: st.clock ? { state: st.clock.state, error_ns: st.clock.error_ns } : null,
    load: null, latency_ms: null, frame: st.channel ? st.channel.frame : null,
    uptime_s: st.uptime_s, encode_latency_ms: st.encode_latency_ms,
  };
}

export function renderSwarm() {
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
export function forChannel(m, id) {
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
export function offsetTag(deviation) {
  const k = deviation && deviation.frame_offset;
  if (!isNum(k) || k === 0) return null;
  const d = deviation;
  return el('span', {
    class: 'tag bad',
    title: `numbers the same pictures ${Math.abs(k)} frame${Math.abs(k) === 1 ? '' : 's'} ${k > 0 ? 'ahead of' : 'behind'} this node; ${d.hash_disagreements} of ${d.hashes_compared} recent segment hashes differ`,
    text: `${k > 0 ? '+' : ''}${k} fr`,
  });
}

export function memberHealth(m) {
  const alive = m.alive !== false;
  const healthy = alive && m.healthy !== false;
  if (!alive) return { healthy, tone: 'bad', text: 'down' };
  if (!healthy) return { healthy, tone: 'warn', text: 'degraded' };
  return { healthy, tone: 'ok', text: 'healthy' };
}

export function memberRow(m, leader, standalone) {
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
  const outlook = m.outlook || {};
  const standingBy = Array.isArray(outlook.standing_by) ? outlook.standing_by : [];
  const prepared = Array.isArray(outlook.prepared) ? outlook.prepared : [];
  const alarms = Array.isArray(outlook.alarms) ? outlook.alarms : [];
  const standbyTag = standingBy.length
    ? el('span', {
      class: `tag${prepared.length ? ' warn' : ''}`,
      dataset: { standby: prepared.length ? 'prepared' : 'standing-by' },
      title: `standby unit for ${standingBy.join(', ')}${prepared.length ? `; encoding ${prepared.join(', ')} for the swarm` : ''}`,
      text: prepared.length ? `standby · encoding ${prepared.join(', ')}` : 'standby',
    })
    : null;
  const alarmTag = alarms.length
    ? el('span', {
      class: 'tag bad',
      dataset: { alarm: alarms.map((a) => a.component).join(' ') },
      title: alarms.map((a) => `${a.component}: failure predicted within 30 s (${fmtPct(a.probability)})`).join('\n'),
      text: 'failure predicted',
    })
    : null;

  return el('tr', { class: classes.filter(Boolean).join(' '), title, dataset: { node: m.node, healthy: String(health.healthy) } },
    el('td', null, swatch(m.node), el('span', { class: 'node-id', text: m.node }),
      m.self ? el('span', { class: 'tag', text: 'self' }) : null,
      m.isolated ? el('span', { class: 'tag bad', text: 'isolated' }) : null),
    el('td', null, role, standbyTag),
    el('td', null,
      el('span', { class: `status tone-${health.tone}`, text: health.text }),
      alarmTag,
      m.recent_errors > 0 ? el('span', { class: 'tag bad', title: 'recent errors', text: `${m.recent_errors} err` }) : null),
    el('td', null, weightCell(m.weight)),
    el('td', { class: 'num', text: fmtPct(m.confidence) }),
    el('td', null, clockCell(m.clock)),
    el('td', { class: `num${cpuTone ? ` tone-${cpuTone}-text` : ''}`, text: fmtPct(load.cpu) }),
    el('td', { class: 'num', text: m.self && !isNum(m.latency_ms) ? DASH : fmtMs(m.latency_ms) }),
    el('td', { class: 'num', title: m.timecode || null }, fmtId(m.frame), offsetTag(m.deviation)),
    el('td', { class: 'num', text: fmtDuration(m.uptime_s) }));
}

export function weightCell(weight) {
  if (!isNum(weight)) return DASH;
  const pct = Math.max(0, Math.min(1, weight)) * 100;
  return [
    el('span', { class: 'meter' }, el('span', { class: 'meter-fill', style: { width: `${pct}%`, display: 'block' } })),
    el('span', { text: weight.toFixed(2) }),
  ];
}

export function clockCell(clock) {
  if (!clock) return DASH;
  const tone = clockTone(clock);
  return el('span', { class: `status tone-${tone}` },
    el('span', { text: clock.state || DASH }),
    isNum(clock.error_ns) ? el('span', { class: 'sub', text: `±${fmtNs(clock.error_ns)}` }) : null);
}

/** Dropped swarm packets: every counter except `accepted`. */
export function rejectedPackets(packets) {
  const entries = Object.entries(packets || {}).filter(([k, v]) => k !== 'accepted' && isNum(v) && v > 0);
  return {
    total: entries.reduce((sum, [, v]) => sum + v, 0),
    detail: entries.map(([k, v]) => `${k}: ${fmtInt(v)}`).join(', '),
  };
}

export function renderSwarmSummary(sw, members, standalone) {
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
    chips.push(...standbyChips(sw.standby));
    const rejected = rejectedPackets(sw.packets);
    if (rejected.total > 0) {
      chips.push(el('span', { class: 'chip tone-warn', title: rejected.detail, text: `${fmtInt(rejected.total)} packets rejected` }));
    }
  }
  $('swarm-summary').replaceChildren(...chips);
}

/** Why a channel needs a standby unit, in words (a `StandbyCause`). */
export function standbyCause(c) {
  if (!c) return '';
  if (c.kind === 'predicted') return `${c.node} predicted to fail (${c.component}, ${fmtPct(c.probability)})`;
  if (c.kind === 'behind') return `${c.node} ${isNum(c.seconds) ? c.seconds.toFixed(1) : '?'} s behind its pace`;
  if (c.kind === 'lost') return `${c.node} lost`;
  return String(c.kind || '');
}

/** On a standby unit: one chip per channel it stands by for (`standby` of `GET /api/v1/swarm`). */
export function standbyChips(standby) {
  return Object.entries(standby || {}).sort(([a], [b]) => a.localeCompare(b)).map(([channel, s]) => {
    const trouble = Array.isArray(s.trouble) ? s.trouble.map(standbyCause).join('; ') : '';
    const release = isNum(s.release_in_s) ? `; released in ${Math.ceil(s.release_in_s)} s unless needed` : '';
    const title = [trouble && `in trouble: ${trouble}`, Array.isArray(s.standbys) && `standby units: ${s.standbys.join(', ')}`]
      .filter(Boolean).join('\n');
    return el('span', {
      class: `chip${s.prepared ? ' tone-warn' : ''}`,
      dataset: { standby: channel },
      title: title || null,
      text: s.prepared ? `encoding ${channel} for the swarm: ${standbyCause(s.cause)}${release}` : `standing by for ${channel}`,
    });
  });
}
