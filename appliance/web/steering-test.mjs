// Content Steering in a real player, run by appliance/tests/edge_steering.rs
// against a demo swarm with two CDN edges (nginx): hls.js in headless
// Chromium (Debian's, driven by playwright-core) plays the steered
// multivariant playlist through edge-1; the path behind edge-1 degrades
// (predicted failure) and the test kills edge-1; the player must follow
// the steering server to edge-2 and keep playing well past what it had
// buffered when the edge died. Prints one `step: ...` line per
// finished step and a `figures: {...}` line; exits non-zero with the reason
// on the first failure.
//
//   node steering-test.mjs --url http://127.0.0.1:8081/steered/main/master.m3u8 \
//     --kill PGID --from http://127.0.0.1:8180 --to http://127.0.0.1:8181 \
//     [--admin http://127.0.0.1:9080/ --password-file F]
//
// With --admin (the admin API of edge-1's upstream node), edge-1's failure
// is predicted first: an origin latency drill degrades the path behind it
// and the player must move to edge-2 before edge-1 is killed, with no
// stall after the kill.

import { launchChromium } from './chromium.mjs';
import { readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const step = (what) => console.log(`step: ${what}`);
const fail = (why) => {
  console.error(`FAIL: ${why}`);
  process.exit(1);
};
for (const a of ['url', 'kill', 'from', 'to']) if (!args[a]) fail(`--${a} is required`);

const browser = await launchChromium();
const timer = setTimeout(() => fail('the steering test took over 3 minutes'), 180_000);

try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  // A page of the origin, so the steering server is the page's own site.
  await page.goto(new URL('/healthz', args.url).href);
  await page.setContent('<video id="v" muted autoplay playsinline></video>');
  await page.addScriptTag({ path: join(dirname(fileURLToPath(import.meta.url)), 'node_modules/hls.js/dist/hls.min.js') });
  await page.evaluate((url) => {
    const w = window;
    w.seen = { fragments: [], steering: [], errors: [], waiting: [] };
    const video = document.getElementById('v');
    const hls = new w.Hls({ lowLatencyMode: false });
    w.hls = hls;
    hls.on(w.Hls.Events.FRAG_LOADED, (_, d) => w.seen.fragments.push({ url: d.frag.url, at: performance.now() }));
    hls.on(w.Hls.Events.STEERING_MANIFEST_LOADED, (_, d) => w.seen.steering.push({ priority: d.steeringManifest['PATHWAY-PRIORITY'], at: performance.now() }));
    hls.on(w.Hls.Events.ERROR, (_, d) => w.seen.errors.push({ details: d.details, fatal: d.fatal, at: performance.now() }));
    video.addEventListener('waiting', () => w.seen.waiting.push({ t: video.currentTime, at: performance.now() }));
    hls.loadSource(url);
    hls.attachMedia(video);
    video.play().catch(() => {});
  }, args.url);

  const state = () => page.evaluate(() => {
    const v = document.getElementById('v');
    const end = v.buffered.length ? v.buffered.end(v.buffered.length - 1) : 0;
    return { t: v.currentTime, buffered: end, now: performance.now(), pathway: window.hls.pathwayPriority, seen: window.seen };
  });
  const wait = async (what, ok, ms) => {
    const until = Date.now() + ms;
    for (;;) {
      const s = await state();
      if (ok(s)) return s;
      if (Date.now() > until) fail(`${what} (after ${ms / 1000} s: time ${s.t.toFixed(1)} s, ${s.seen.fragments.length} fragments, errors ${JSON.stringify(s.seen.errors.slice(-3))})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const through = (s, base) => s.seen.fragments.filter((f) => f.url.startsWith(base));

  let s = await wait('the player never played 6 s through edge-1', (x) => x.t > 6 && through(x, args.from).length >= 3, 60_000);
  if (through(s, args.to).length) fail(`fragments came from edge-2 while edge-1 was healthy: ${through(s, args.to)[0].url}`);
  step(`playing through edge-1 (${through(s, args.from).length} fragments, time ${s.t.toFixed(1)} s)`);
  await wait('the steering server was never asked', (x) => x.seen.steering.length > 0, 20_000);
  step('the player reads the steering server');

  // Predicted: the network behind edge-1 degrades first (an origin
  // latency drill on its upstream node through the admin API); the agent
  // sees its probes slow, the steering server puts it last, and the
  // player moves while edge-1 still serves — before it fails.
  const predicted = Boolean(args.admin);
  if (predicted) {
    const password = readFileSync(args['password-file'], 'utf8').trim();
    const login = await fetch(new URL('/api/v1/login', args.admin), { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ password }) });
    if (login.status !== 200) fail(`login at ${args.admin}: ${login.status}`);
    const cookie = login.headers.getSetCookie()[0].split(';')[0];
    const { csrf_token: csrf } = await login.json();
    const pageDrilled = (await state()).now;
    const r = await fetch(new URL('/api/v1/drills/origin-latency', args.admin), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Cookie: cookie, 'X-CSRF-Token': csrf },
      body: JSON.stringify({ ms: 2000, ramp_s: 10, seconds: 300 }),
    });
    if (r.status !== 202) fail(`origin latency drill: ${r.status} ${await r.text()}`);
    step('origin latency drill on edge-1\'s upstream: answers held up to 2000 ms, reached in 10 s');
    s = await wait('the steering server never put edge-2 first while edge-1 degraded', (x) => x.seen.steering.some((m) => m.at > pageDrilled && m.priority[0] === 'edge-2'), 30_000);
    const early = s.seen.steering.find((m) => m.at > pageDrilled && m.priority[0] === 'edge-2');
    step(`the steering server put edge-2 first ${((early.at - pageDrilled) / 1000).toFixed(1)} s into the drill, edge-1 still serving`);
    s = await wait('no fragment came through edge-2 while edge-1 degraded', (x) => x.seen.fragments.some((f) => f.at > pageDrilled && f.url.startsWith(args.to)), 30_000);
    const first = s.seen.fragments.find((f) => f.at > pageDrilled && f.url.startsWith(args.to));
    step(`the player moved to edge-2 before edge-1 failed (${((first.at - pageDrilled) / 1000).toFixed(1)} s into the drill; ${s.seen.waiting.filter((w) => w.at > pageDrilled).length} stalls)`);
    // The change of order is an event on the page, with its reason.
    const ev = await fetch(new URL('/api/v1/events', args.admin), { headers: { Cookie: cookie } });
    if (ev.status !== 200) fail(`events at ${args.admin}: ${ev.status}`);
    const steeringEvent = (await ev.json()).find((e) => e.kind === 'steering' && e.message.startsWith('players steered to edge-2 > edge-1 (edge-1: '));
    if (!steeringEvent) fail('no steering event naming edge-1 and why it went last');
    step(`steering event: ${steeringEvent.message}`);
    // Let the player settle on edge-2 for a few seconds before the kill.
    await new Promise((res) => setTimeout(res, 3000));
  }

  // The edge dies; the agent finds it down, the steering server puts it
  // last, and the player moves (or has moved) before its buffer runs out.
  const before = await state();
  const killedAt = before.now;
  const horizon = before.buffered;
  // Master and workers (the edge's process group), as a failing machine.
  process.kill(-Number(args.kill), 'SIGKILL');
  step(`edge-1 killed at media time ${before.t.toFixed(1)} s with ${(horizon - before.t).toFixed(1)} s buffered`);

  s = await wait('the steering server never put edge-2 first', (x) => x.seen.steering.some((m) => m.at > killedAt && m.priority[0] !== 'edge-1'), 30_000);
  const steered = s.seen.steering.find((m) => m.at > killedAt && m.priority[0] !== 'edge-1');
  step(`the steering server put ${steered.priority[0]} first ${((steered.at - killedAt) / 1000).toFixed(1)} s after the kill`);

  s = await wait('no fragment came through edge-2 after the kill', (x) => x.seen.fragments.some((f) => f.at > killedAt && f.url.startsWith(args.to)), 30_000);
  const moved = s.seen.fragments.find((f) => f.at > killedAt && f.url.startsWith(args.to));
  step(`fragments come through edge-2 (first ${((moved.at - killedAt) / 1000).toFixed(1)} s after the kill)`);

  // Past everything buffered at the kill plus 6 s: only new segments,
  // fetched through edge-2, can take it there.
  const target = horizon + 6;
  s = await wait(`playback never reached ${target.toFixed(1)} s (the buffer at the kill plus 6 s)`, (x) => x.t > target, 60_000);
  const stalls = s.seen.waiting.filter((w) => w.at > killedAt).length;
  const fatal = s.seen.errors.filter((e) => e.fatal);
  if (fatal.length) fail(`fatal player errors: ${JSON.stringify(fatal)}`);
  if (predicted && stalls > 0) fail(`${stalls} stalls after the kill of an edge the player had already left`);
  // The player took the steering server's order, not only its own retry.
  if (!Array.isArray(s.pathway) || s.pathway[0] !== 'edge-2') fail(`the player's pathway priority is ${JSON.stringify(s.pathway)}`);
  step(`played to ${s.t.toFixed(1)} s, past the buffer at the kill plus 6 s, with ${stalls} stalls`);
  console.log(`figures: ${JSON.stringify({
    steered_after_s: (steered.at - killedAt) / 1000,
    edge2_after_s: (moved.at - killedAt) / 1000,
    buffered_at_kill_s: horizon - before.t,
    stalls_after_kill: stalls,
    errors_after_kill: s.seen.errors.filter((e) => e.at > killedAt).map((e) => e.details),
  })}`);
} catch (e) {
  fail(e.stack || String(e));
} finally {
  clearTimeout(timer);
  await browser.close();
}
