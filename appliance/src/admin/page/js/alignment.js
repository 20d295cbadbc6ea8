/* Lockstep admin console: Segment alignment across the swarm and the lockstep lanes.
 */
import { $, ALL_TRACKS, DASH, SHORT_HASH_LEN, el, fmtDuration, fmtId, fmtMs, fmtNs, isNum, state } from './core.js';
import { knowNodes, swatch } from './swarm.js';

// ------------------------------------------------------------ alignment

/**
 * Rows come one per (segment, track), newest segment first. "All tracks"
 * groups a segment's tracks under one index cell; a track filter shows
 * one track per segment.
 */
export function renderAlignment(al) {
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
export function alignmentRow(r, nodes, span, groupDiffers) {
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
export function renderTrackFilter(rows) {
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

export function renderAlignmentSummary(rows) {
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
export function describeCorrection(c) {
  if (c && c.realign) return `realign ${c.realign.frames > 0 ? '+' : ''}${c.realign.frames} fr`;
  if (c && c.clock) return `clock ${fmtNs(c.clock.offset_ns)}, ${(c.clock.rate_ppb / 1000).toFixed(0)} ppm`;
  return 'correction';
}

/** Every node of the channel: position, deviation, clock lane, prediction, last action. */
export function renderLockstep(ls) {
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

export function lockstepRow(n, ls) {
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
    // This node against the swarm's consensus (the median of its neighbours).
    const s = ls.consensus;
    if (!s) prediction = el('span', { class: 'sub', text: 'reference' });
    else if (s.half_frame_in_s === 0) prediction = el('span', { class: 'status tone-bad', text: 'half a frame from the swarm' });
    else if (isNum(s.half_frame_in_s)) prediction = el('span', { class: `status tone-${s.flagged ? 'warn' : 'ok'}`, text: `½ frame from the swarm in ${fmtDuration(s.half_frame_in_s)}` });
    else prediction = el('span', { class: 'status tone-ok', text: 'steady with the swarm', title: `swarm ${fmtMs(s.offset_ms)} ± ${fmtMs(s.error_ms)}, ${s.drift_ppm.toFixed(1)} ppm` });
  }
  const a = n.action;
  const actions = [];
  if (a && a.proposal) actions.push(`${describeCorrection(a.proposal.correction)} at ${fmtId(a.proposal.at_segment)}: ${a.outcome}`);
  if (n.reencoded && n.reencoded.before_publication > 0) actions.push(`${n.reencoded.before_publication} corrected before publication`);
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
