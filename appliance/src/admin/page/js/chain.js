/* Lockstep admin console: the channel's encoding chain — source → encoder →
 * packager → origin → CDN edges, and the peers' encoders feeding the
 * combined output —
 * as boxes coloured by each component's state, with the reasons.
 */
import { $, el } from './core.js';

const COLUMNS = [
  ['source', 'Source'],
  ['encoder', 'Encoders'],
  ['packager', 'Packager'],
  ['origin', 'Origin'],
  ['edge', 'Edges'],
];
const TONE = { ok: 'ok', warn: 'warn', bad: 'bad', down: 'bad' };

/** Its predicted risk, when a model scores it: "risk 83 %", marked when alarming. */
function risk(c) {
  if (!c.risk || typeof c.risk.probability !== 'number') return [];
  const text = `risk ${Math.round(c.risk.probability * 100)} % in 30 s${c.risk.alarm ? ' — failure predicted' : ''}`;
  return [el('div', { class: `chain-risk${c.risk.alarm ? ' is-alarm' : ''}`, text })];
}

/** One component as a box: kind and node, state, predicted risk, reasons. */
function box(c, self) {
  const reasons = Array.isArray(c.reasons) ? c.reasons : [];
  return el('div', { class: `chain-box tone-${TONE[c.state] || 'neutral'}${c.node === self ? ' is-self' : ''}`, dataset: { id: c.id, state: c.state }, title: reasons.join('\n') || c.state },
    el('div', { class: 'chain-node', text: c.node }),
    el('div', { class: 'chain-state', text: c.state }),
    ...risk(c),
    ...reasons.map((r) => el('div', { class: 'chain-reason', text: r })));
}

/** The chain of `GET /api/v1/chain`: a column per stage, arrows between. */
export function renderChain(chain) {
  const body = $('chain');
  const components = Array.isArray(chain.components) ? chain.components : [];
  const worst = components.reduce((w, c) => (['ok', 'warn', 'bad', 'down'].indexOf(c.state) > ['ok', 'warn', 'bad', 'down'].indexOf(w) ? c.state : w), 'ok');
  const chip = $('chain-summary');
  chip.hidden = !components.length;
  chip.className = `chip tone-${TONE[worst]}`;
  chip.textContent = worst === 'ok' ? 'all healthy' : `${components.filter((c) => c.state !== 'ok').length} need attention`;
  const columns = [];
  // The edges' column only where players are steered between edges.
  const shown = COLUMNS.filter(([kind]) => kind !== 'edge' || components.some((c) => c.kind === 'edge'));
  shown.forEach(([kind, title], i) => {
    if (i > 0) columns.push(el('div', { class: 'chain-arrow', text: '→', 'aria-hidden': 'true' }));
    columns.push(el('div', { class: 'chain-col', dataset: { kind } },
      el('div', { class: 'chain-title', text: title }),
      ...components.filter((c) => c.kind === kind).map((c) => box(c, chain.node))));
  });
  body.replaceChildren(...columns);
}
