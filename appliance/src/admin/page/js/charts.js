/* Lockstep admin console: The history charts (complexity, weights, CPU) and their hover read-out.
 */
import { $, DASH, el, fmtClock, fmtFixed, fmtId, fmtInt, fmtPct, isNum, state } from './core.js';
import { knowNodes, nodeColour, swatch } from './swarm.js';

// ------------------------------------------------------------ charts

export const CHART_PAD = { l: 42, r: 10, t: 10, b: 20 };
export const CHART_GRID = 'rgba(255, 255, 255, 0.07)';
export const CHART_TEXT = '#8a93a4';
export const CHART_FONT = '11px system-ui, sans-serif';
export const BAR_COLOUR = '#4a8fe0';
export const BAR_HOVER = '#8cc4ff';
export const TOOLTIP_LINE = 15;

/** Sizes the backing store to the element and the pixel ratio. */
export function prepareCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  const bw = Math.max(1, Math.round(w * dpr));
  const bh = Math.max(1, Math.round(h * dpr));
  if (canvas.width !== bw || canvas.height !== bh) {
    canvas.width = bw;
    canvas.height = bh;
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

/**
 * Draws a chart. spec: xs (x values, evenly spaced), series [{label,
 * colour, values}], yMax, fmtX, fmtY, bars, marker(i) → colour|null,
 * tooltip(i) → [{text, colour}], empty (text when there is no data).
 * The spec is kept on the canvas so hover and resize can redraw it.
 */
export function drawChart(canvas, spec) {
  canvas._spec = spec;
  const { ctx, w, h } = prepareCanvas(canvas);
  if (w < 40 || h < 40) return;
  ctx.font = CHART_FONT;
  ctx.textBaseline = 'middle';
  const n = spec.xs.length;
  if (!n) {
    ctx.fillStyle = CHART_TEXT;
    ctx.textAlign = 'center';
    ctx.fillText(spec.empty || 'No data yet', w / 2, h / 2);
    return;
  }
  const pw = w - CHART_PAD.l - CHART_PAD.r;
  const ph = h - CHART_PAD.t - CHART_PAD.b;
  const yMax = spec.yMax || 1;
  const yAt = (v) => CHART_PAD.t + ph - (Math.max(0, Math.min(v, yMax)) / yMax) * ph;
  const step = spec.bars ? pw / n : n > 1 ? pw / (n - 1) : 0;
  const xAt = spec.bars ? (i) => CHART_PAD.l + (i + 0.5) * step : (i) => CHART_PAD.l + (n > 1 ? i * step : pw / 2);
  const geo = { w, h, pw, ph, n, step, xAt, yAt, yMax };

  drawAxes(ctx, spec, geo);
  const hover = hoverIndex(canvas, spec, geo);
  if (spec.bars) drawBars(ctx, spec, geo, hover);
  else drawLines(ctx, spec, geo);
  if (hover != null) drawHover(ctx, spec, geo, hover);
}

export function drawAxes(ctx, spec, geo) {
  const ticks = [0, geo.yMax / 2, geo.yMax];
  ctx.strokeStyle = CHART_GRID;
  ctx.lineWidth = 1;
  ctx.fillStyle = CHART_TEXT;
  ctx.textAlign = 'right';
  for (const t of ticks) {
    const y = Math.round(geo.yAt(t)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(CHART_PAD.l, y);
    ctx.lineTo(geo.w - CHART_PAD.r, y);
    ctx.stroke();
    ctx.fillText(spec.fmtY(t), CHART_PAD.l - 6, y);
  }
  // About five x labels, first and last pinned to the edges. The last
  // (newest) always shows; others are left out where they would overlap.
  const count = Math.min(5, geo.n);
  const y = geo.h - CHART_PAD.b / 2;
  const right = geo.w - CHART_PAD.r;
  const placed = [];
  for (let k = 0; k < count; k += 1) {
    const i = count === 1 ? geo.n - 1 : Math.round((k * (geo.n - 1)) / (count - 1));
    const text = spec.fmtX(spec.xs[i]);
    const width = ctx.measureText(text).width;
    let left = geo.xAt(i) - width / 2;
    if (count > 1 && k === 0) left = CHART_PAD.l;
    if (k === count - 1 && count > 1) left = right - width;
    placed.push({ text, left: Math.max(CHART_PAD.l, Math.min(left, right - width)), width });
  }
  const last = placed[placed.length - 1];
  let end = -Infinity;
  ctx.textAlign = 'left';
  placed.forEach((p, k) => {
    const isLast = k === placed.length - 1;
    if (!isLast && (p.left < end + 8 || p.left + p.width + 8 > last.left)) return;
    ctx.fillText(p.text, p.left, y);
    end = p.left + p.width;
  });
}

export function drawBars(ctx, spec, geo, hover) {
  const values = spec.series[0] ? spec.series[0].values : [];
  const width = Math.max(1, geo.step - (geo.step > 4 ? 1 : 0));
  const base = geo.yAt(0);
  values.forEach((v, i) => {
    if (!isNum(v)) return;
    const top = geo.yAt(v);
    ctx.fillStyle = i === hover ? BAR_HOVER : BAR_COLOUR;
    ctx.fillRect(geo.xAt(i) - width / 2, top, width, Math.max(1, base - top));
    const mark = spec.marker && spec.marker(i);
    if (mark) {
      ctx.fillStyle = mark;
      ctx.beginPath();
      ctx.arc(geo.xAt(i), CHART_PAD.t + 2, Math.min(2.5, Math.max(1.5, width / 2)), 0, Math.PI * 2);
      ctx.fill();
    }
  });
}

export function drawLines(ctx, spec, geo) {
  ctx.lineWidth = 1.75;
  ctx.lineJoin = 'round';
  for (const s of spec.series) {
    ctx.strokeStyle = s.colour;
    ctx.beginPath();
    let drawing = false;
    s.values.forEach((v, i) => {
      if (!isNum(v)) {
        drawing = false; // gap: the node had no sample
        return;
      }
      if (drawing) ctx.lineTo(geo.xAt(i), geo.yAt(v));
      else ctx.moveTo(geo.xAt(i), geo.yAt(v));
      drawing = true;
    });
    ctx.stroke();
  }
}

export function hoverIndex(canvas, spec, geo) {
  const px = canvas._hoverX;
  if (px == null || px < CHART_PAD.l || px > geo.w - CHART_PAD.r) return null;
  const rel = px - CHART_PAD.l;
  const i = spec.bars ? Math.floor(rel / geo.step) : geo.n > 1 ? Math.round(rel / geo.step) : 0;
  return Math.max(0, Math.min(geo.n - 1, i));
}

export function drawHover(ctx, spec, geo, i) {
  const x = geo.xAt(i);
  if (!spec.bars) {
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.25)';
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(Math.round(x) + 0.5, CHART_PAD.t);
    ctx.lineTo(Math.round(x) + 0.5, CHART_PAD.t + geo.ph);
    ctx.stroke();
  }
  const lines = spec.tooltip ? spec.tooltip(i) : [
    { text: spec.fmtX(spec.xs[i]) },
    ...spec.series.map((s) => ({ text: `${s.label}  ${isNum(s.values[i]) ? spec.fmtY(s.values[i]) : DASH}`, colour: s.colour })),
  ];
  drawTooltip(ctx, geo, x, lines);
}

export function drawTooltip(ctx, geo, x, lines) {
  const pad = 6;
  ctx.font = CHART_FONT;
  const textWidth = Math.max(...lines.map((l) => ctx.measureText(l.text).width + (l.colour ? 12 : 0)));
  const bw = textWidth + pad * 2;
  const bh = lines.length * TOOLTIP_LINE + pad * 2 - 3;
  let bx = x + 12;
  if (bx + bw > geo.w - 2) bx = x - 12 - bw;
  bx = Math.max(2, bx);
  const by = 2;
  ctx.fillStyle = 'rgba(13, 15, 19, 0.94)';
  ctx.strokeStyle = '#3a4150';
  ctx.lineWidth = 1;
  ctx.fillRect(bx, by, bw, bh);
  ctx.strokeRect(bx + 0.5, by + 0.5, bw - 1, bh - 1);
  ctx.textAlign = 'left';
  lines.forEach((line, k) => {
    const ty = by + pad + k * TOOLTIP_LINE + 5;
    let tx = bx + pad;
    if (line.colour) {
      ctx.fillStyle = line.colour;
      ctx.fillRect(tx, ty - 4, 8, 8);
      tx += 12;
    }
    ctx.fillStyle = k === 0 ? '#e4e7ec' : '#c3c8d1';
    ctx.fillText(line.text, tx, ty);
  });
}

export function redraw(canvas) {
  if (canvas._spec) drawChart(canvas, canvas._spec);
}

/** Rounds a maximum up so axes read well: at least `floor`. */
export function niceMax(values, floor) {
  const max = Math.max(floor, ...values.filter(isNum));
  if (max <= floor) return floor;
  const mag = 10 ** Math.floor(Math.log10(max));
  return Math.ceil(max / mag) * mag;
}

export function renderComplexityChart() {
  const rows = state.analysis;
  const values = rows.map((a) => a.complexity);
  drawChart($('chart-complexity'), {
    xs: rows.map((a) => a.index),
    series: [{ label: 'complexity', colour: BAR_COLOUR, values }],
    bars: true,
    yMax: niceMax(values, 1),
    fmtX: (x) => `#${x}`,
    fmtY: (v) => v.toFixed(1),
    empty: 'No analysed segments yet',
    marker: (i) => (rows[i].frames_skipped > 0 ? '#f2a93b' : rows[i].scene_cuts > 0 ? '#e4e7ec' : null),
    tooltip: (i) => {
      const a = rows[i];
      return [
        { text: `segment ${fmtId(a.index)}${a.timecode ? ` · ${a.timecode}` : ''}` },
        { text: `complexity ${fmtFixed(a.complexity, 2)}` },
        a.content ? { text: `content ${String(a.content).replace(/_/g, ' ')}` } : null,
        { text: `scene cuts ${fmtInt(a.scene_cuts)}` },
        a.frames_skipped > 0 ? { text: `frames skipped ${fmtInt(a.frames_skipped)}` } : null,
      ].filter(Boolean);
    },
  });
}

/** Nodes that appear anywhere in the history, sorted. */
export function historyNodes(samples) {
  const nodes = new Set();
  for (const s of samples) {
    Object.keys(s.weights || {}).forEach((n) => nodes.add(n));
    Object.keys(s.cpu || {}).forEach((n) => nodes.add(n));
  }
  return [...nodes].sort();
}

export function renderHistoryCharts() {
  const samples = state.history;
  const nodes = historyNodes(samples);
  knowNodes(nodes);
  const xs = samples.map((s) => s.t_ms);
  const seriesOf = (key) => nodes.map((n) => ({
    label: n,
    colour: nodeColour(n),
    values: samples.map((s) => (s[key] ? s[key][n] : undefined)),
  }));
  const weights = seriesOf('weights');
  const cpu = seriesOf('cpu');
  const flat = (series) => series.flatMap((s) => s.values);
  drawChart($('chart-weights'), {
    xs, series: weights, yMax: niceMax(flat(weights), 1),
    fmtX: fmtClock, fmtY: (v) => v.toFixed(2), empty: 'No history yet',
  });
  drawChart($('chart-cpu'), {
    xs, series: cpu, yMax: niceMax(flat(cpu), 1),
    fmtX: fmtClock, fmtY: fmtPct, empty: 'No history yet',
  });
  renderLegend(nodes);
}

export function renderLegend(historyNodeIds) {
  const group = (state.swarm && state.swarm.group) || [];
  const nodes = [...new Set([...group, ...historyNodeIds])].sort();
  $('node-legend').replaceChildren(...nodes.map((n) =>
    el('span', { class: 'legend-item' }, swatch(n), n)));
}

export function renderCharts() {
  renderComplexityChart();
  renderHistoryCharts();
}

export function bindChartHover(canvas) {
  canvas.addEventListener('mousemove', (ev) => {
    canvas._hoverX = ev.offsetX;
    redraw(canvas);
  });
  canvas.addEventListener('mouseleave', () => {
    canvas._hoverX = null;
    redraw(canvas);
  });
}
