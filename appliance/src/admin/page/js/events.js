/* Lockstep admin console: The event log.
 */
import { $, EVENT_TONE, MAX_EVENTS, el, fmtClock, isNum, state } from './core.js';

// ------------------------------------------------------------ events

export const eventKey = (ev) => (ev.id != null ? `#${ev.id}` : `${ev.t_ms}|${ev.kind}|${ev.message}`);

export function addEvents(list) {
  let added = false;
  for (const ev of list) {
    if (!ev || typeof ev !== 'object') continue;
    const key = eventKey(ev);
    if (state.events.has(key)) continue;
    state.events.set(key, ev);
    if (isNum(ev.id) && ev.id > state.lastEventId) state.lastEventId = ev.id;
    added = true;
  }
  if (added) renderEvents();
}

export function sortedEvents() {
  const order = (ev) => (isNum(ev.id) ? ev.id : Number.MAX_SAFE_INTEGER);
  return [...state.events.values()].sort((a, b) => order(b) - order(a) || (b.t_ms || 0) - (a.t_ms || 0));
}

export function renderEvents() {
  let list = sortedEvents();
  if (list.length > MAX_EVENTS) {
    list.slice(MAX_EVENTS).forEach((ev) => state.events.delete(eventKey(ev)));
    list = list.slice(0, MAX_EVENTS);
  }
  $('events').replaceChildren(...list.map(eventItem));
  $('events-count').textContent = list.length ? `${list.length} shown` : '';
  if (!list.length) $('events').append(el('li', { class: 'empty', text: 'No events yet.' }));
}

export function eventItem(ev) {
  const kind = ev.kind || 'event';
  const tone = EVENT_TONE[kind] || 'neutral';
  const message = ev.message || '';
  const showNode = ev.node && !message.includes(ev.node);
  const stamp = isNum(ev.t_ms) ? new Date(ev.t_ms) : null;
  return el('li', { class: `event tone-${tone}`, dataset: { kind } },
    el('time', { datetime: stamp ? stamp.toISOString() : null, title: stamp ? stamp.toLocaleString() : null, text: fmtClock(ev.t_ms) }),
    el('span', { class: 'badge', text: kind }),
    el('span', { class: 'msg' }, showNode ? el('span', { class: 'node', text: ev.node }) : null, message));
}
