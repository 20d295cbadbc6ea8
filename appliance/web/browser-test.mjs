// Browser test of the admin page, run by appliance/tests/admin_browser.rs
// against a 3-node demo swarm: headless Chromium (Debian's) driven by
// playwright-core. Prints one `step: ...` line per finished step; exits
// non-zero with the reason on the first failure. Screenshots go to --shots.
//
//   node browser-test.mjs --admin http://127.0.0.1:9080/ --password-file F \
//     --shots DIR --pids node-1=123,node-2=124,node-3=125 \
//     --admins node-1=http://127.0.0.1:9080/,node-2=... --clip CLIP.mp4
//
// CLIP.mp4 (160x90, no audio) becomes a file channel, and is deleted to
// make that channel fail.

import { launchChromium } from './chromium.mjs';
import { readFileSync, mkdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const pairs = (s) => Object.fromEntries((s || '').split(',').filter(Boolean).map((kv) => kv.split('=')));
const password = readFileSync(args['password-file'], 'utf8').trim();
const pids = pairs(args.pids);
const admins = pairs(args.admins);
const shots = args.shots;
mkdirSync(shots, { recursive: true });

const step = (what) => console.log(`step: ${what}`);
const fail = (why) => {
  console.error(`FAIL: ${why}`);
  process.exit(1);
};

const browser = await launchChromium();
const timer = setTimeout(() => fail('the whole browser test took over 4 minutes'), 240_000);

try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`) });
  // Waits up to 30 s for `ok` in the page; a timeout names the step and
  // leaves a screenshot of the page as it was.
  const waitStep = async (what, ok) => {
    try {
      await page.waitForFunction(ok, null, { timeout: 30_000 });
    } catch (e) {
      await shot('timeout').catch(() => {});
      fail(`${what}: not within 30 s (${e.message.split('\n')[0]}); screenshot timeout.png`);
    }
  };

  // Pages are fetched before any login; the API refuses everything else.
  const login = async (url) => {
    await page.goto(url);
    await page.waitForSelector('#password', { state: 'visible', timeout: 20_000 });
    await page.fill('#password', password);
    await page.click('#login');
    await page.waitForSelector('#app:not([hidden])', { timeout: 20_000 });
  };

  await page.goto(args.admin);
  await page.waitForSelector('#password', { state: 'visible', timeout: 20_000 });
  await page.fill('#password', 'not the password');
  await page.click('#login');
  await page.waitForFunction(() => document.querySelector('#login-error')?.textContent.includes('wrong password'), null, { timeout: 10_000 });
  await shot('login');
  step('a wrong password is refused on the page');

  await login(args.admin);
  await page.waitForFunction(
    () => [...document.querySelectorAll('#members [data-node]')].filter((r) => r.dataset.healthy === 'true').length === 3,
    null,
    { timeout: 40_000 },
  );
  const leaderShown = await page.evaluate(() => document.querySelector('#members').textContent.includes('Leader'));
  if (!leaderShown) fail('no member is shown as Leader');
  step('logged in; three healthy nodes and a leader shown');

  // The preview plays the combined output: its time advances.
  const played = async (seconds, limit) => {
    const t0 = await page.evaluate(() => document.querySelector('#preview').currentTime);
    await page.waitForFunction((t) => document.querySelector('#preview').currentTime > t, t0 + seconds, { timeout: limit });
    return page.evaluate(() => document.querySelector('#preview').currentTime);
  };
  const t = await played(2, 60_000);
  await shot('overview');
  step(`preview plays the combined output (currentTime ${t.toFixed(1)} s)`);

  // The lockstep panel: every node in step, each with its clock on a lane.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#lockstep tr[data-node]')];
    return rows.length === 3
      && rows.every((r) => r.textContent.includes('in step'))
      && document.querySelectorAll('#lockstep .lane .dot').length === 3;
  }, null, { timeout: 45_000 });
  step('lockstep panel shows three nodes in step, each clock on its lane');

  // The chain panel: this node's source, encoder, packager and origin,
  // and the two peers' encoders feeding its combined output.
  await page.waitForFunction(() => {
    const count = (k) => document.querySelectorAll(`#chain .chain-col[data-kind="${k}"] .chain-box`).length;
    return count('encoder') === 3 && count('source') === 1 && count('packager') === 1 && count('origin') === 1;
  }, null, { timeout: 30_000 });
  step('chain panel shows source, three encoders, packager and origin');

  // Change a rendition's bitrate; the measured bitrate follows.
  const row = 'tr[data-rendition="180p"]';
  const measured = () => page.evaluate((r) => parseFloat(document.querySelector(`${r} .measured`).textContent.replace(/[^0-9.]/g, '')), row);
  // The rate before the change must be above the bound the change is
  // judged by, or the step would prove nothing.
  const bound = 130;
  try {
    await page.waitForFunction(
      ([r, b]) => parseFloat(document.querySelector(`${r} .measured`)?.textContent.replace(/[^0-9.]/g, '') || '0') > b,
      [row, bound],
      { timeout: 30_000 },
    );
  } catch (e) {
    fail(`180p's measured bitrate before the change never rose above ${bound} kbit/s: ${e.message.split('\n')[0]}`);
  }
  const before = await measured();
  await page.fill(`${row} .bitrate`, '80');
  await page.click(`${row} .apply`);
  await page.waitForFunction(
    ([r, b]) => {
      const v = parseFloat(document.querySelector(`${r} .measured`).textContent.replace(/[^0-9.]/g, ''));
      return v > 0 && v < b;
    },
    [row, bound],
    { timeout: 45_000 },
  );
  const after = await measured();
  await shot('bitrate');
  step(`bitrate change took effect: 180p measured ${before} → ${after} kbit/s (judged against ${bound})`);

  // The configuration form: a bad value is refused naming its key and
  // marked; a good one is applied live at a segment boundary.
  // The form shows the bitrate just set, so applying it cannot undo it.
  await page.waitForFunction(
    () => [...document.querySelectorAll('#cfg-renditions tr')].some(
      (tr) => tr.querySelector('[data-col="name"]').value === '180p' && tr.querySelector('[data-col="bitrate_kbps"]').value === '80'),
    null,
    { timeout: 15_000 },
  );
  await page.fill('#cfg-window', '1');
  await page.click('#cfg-apply');
  await page.waitForFunction(() => document.querySelector('#cfg-message').classList.contains('error'), null, { timeout: 15_000 });
  const refused = await page.evaluate(() => ({
    text: document.querySelector('#cfg-message').textContent,
    marked: document.querySelector('#cfg-window').classList.contains('invalid'),
  }));
  if (!refused.text.includes('output.window_segments') || !refused.marked) fail(`bad window not named and marked: ${JSON.stringify(refused)}`);
  step(`the form refuses a window of 1 segment: "${refused.text}"`);
  await page.fill('#cfg-window', '12');
  await page.click('#cfg-apply');
  await page.waitForFunction(() => /takes over at segment \d+/.test(document.querySelector('#cfg-message').textContent), null, { timeout: 20_000 });
  const applied = await page.evaluate(() => document.querySelector('#cfg-message').textContent);
  // Clear of the sticky top bar.
  await page.locator('.p-config').evaluate((e) => e.scrollIntoView({ block: 'end' }));
  await page.locator('.p-config').screenshot({ path: join(shots, 'config.png') });
  const t1 = await played(2, 60_000);
  step(`${applied} The preview plays on (currentTime ${t1.toFixed(1)} s)`);

  // Channels: a bad id is refused naming its key; a good channel is
  // created from the page, shown, played, and deleted again.
  await page.click('#channel-new');
  await page.fill('#new-id', 'combined');
  await page.fill('#new-width', '320');
  await page.fill('#new-height', '180');
  await page.fill('#new-ladder', '180p:200');
  await page.uncheck('#new-audio');
  await page.click('#new-create');
  // Right after a handover the daemon may be busy for a while: the
  // waits here name their step when they time out.
  await waitStep('the reserved id refused', () => document.querySelector('#new-message').classList.contains('error'));
  const badId = await page.evaluate(() => ({
    text: document.querySelector('#new-message').textContent,
    marked: document.querySelector('#new-id').classList.contains('invalid'),
  }));
  if (!badId.text.includes('channel.id') || !badId.marked) fail(`reserved id not named and marked: ${JSON.stringify(badId)}`);
  await page.fill('#new-id', 'pop');
  await page.click('#new-create');
  await page.waitForSelector('#channel-list tr[data-channel="pop"][data-running="true"]', { timeout: 30_000 });
  await waitStep('the new channel shown', () => document.querySelector('#channel-id').textContent === 'pop');
  const tp = await played(2, 60_000);
  const popUrl = await page.evaluate(() => document.querySelector('#preview-url').textContent);
  if (!popUrl.includes('/pop/')) fail(`the preview does not play the new channel: ${popUrl}`);
  await page.locator('.p-channels').evaluate((e) => e.scrollIntoView({ block: 'center' }));
  await page.locator('.p-channels').screenshot({ path: join(shots, 'channels.png') });
  step(`refused "${badId.text}"; channel pop created from the page, its preview plays ${popUrl} (currentTime ${tp.toFixed(1)} s)`);
  await page.click('#channel-list tr[data-channel="pop"] .delete');
  await page.click('#channel-list tr[data-channel="pop"] .delete.armed');
  await page.waitForFunction(() => !document.querySelector('#channel-list tr[data-channel="pop"]'), null, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#channel-id').textContent !== 'pop', null, { timeout: 15_000 });
  await played(1, 60_000);
  step('channel pop deleted from the page; the page shows the first channel again and its preview plays');

  // Kill the node whose segments are chosen; watch from another node.
  // "Chosen" is read from the newest index that every node has published
  // and agrees on, as the watching node sees it: the newest index alone
  // may so far hold only the first node to finish it.
  const chosenNow = () => page.evaluate(async () => {
    const r = await fetch('/api/v1/swarm/alignment?limit=4', { credentials: 'same-origin' });
    const body = await r.json();
    const settled = body.rows.filter((x) => x.agree && x.chosen && Object.keys(x.hashes).length === body.nodes.length);
    return (settled.find((x) => x.track === '180p') || settled[0])?.chosen;
  });
  let current = Object.keys(admins).find((n) => admins[n] === args.admin);
  // Every observer chooses by the published weights, so watching from a
  // node other than the chosen one leaves the choice where it was; while
  // no index has settled yet, wait for one.
  let chosen = await chosenNow();
  const seen = [chosen];
  for (const until = Date.now() + 60_000; (!chosen || chosen === current) && Date.now() < until;) {
    if (chosen) {
      current = Object.keys(admins).find((n) => n !== chosen);
      await login(admins[current]);
      await page.waitForFunction(() => document.querySelectorAll('#members [data-node]').length === 3, null, { timeout: 30_000 });
      await played(1, 60_000);
    } else {
      await page.waitForTimeout(500);
    }
    chosen = await chosenNow();
    seen.push(chosen);
  }
  if (!chosen || !pids[chosen] || chosen === current) {
    fail(`no chosen node other than the watching one (${current}) found within 60 s; chosen in turn: ${seen.join(', ')}`);
  }
  const viewer = current;
  // What the player holds at the kill: it could play that much without a
  // single new segment, so it must play past it.
  const held = await page.evaluate(() => {
    const v = document.querySelector('#preview');
    return { t: v.currentTime, end: v.buffered.length ? v.buffered.end(v.buffered.length - 1) : v.currentTime };
  });
  process.kill(Number(pids[chosen]), 'SIGKILL');
  step(`killed ${chosen} (pid ${pids[chosen]}), the node whose segments were chosen; watching from ${viewer}`);
  await page.waitForFunction(
    (n) => document.querySelector(`#members [data-node="${n}"]`)?.dataset.healthy === 'false',
    chosen,
    { timeout: 30_000 },
  );
  await page.waitForSelector('#events [data-kind="failover"]', { timeout: 30_000 });
  const past = held.end + 2;
  try {
    await page.waitForFunction((t) => document.querySelector('#preview').currentTime > t, past, { timeout: 60_000 });
  } catch (e) {
    fail(`after the kill the preview never played past ${past.toFixed(1)} s (buffered to ${held.end.toFixed(1)} s at the kill): ${e.message.split('\n')[0]}`);
  }
  const t2 = await page.evaluate(() => document.querySelector('#preview').currentTime);
  await shot('failover');
  await page.screenshot({ path: join(shots, 'failover-full.png'), fullPage: true });
  step(`the page shows ${chosen} unhealthy and a failover event; the preview played on past what it held at the kill (${held.t.toFixed(1)} s, buffered to ${held.end.toFixed(1)} s) to ${t2.toFixed(1)} s`);
  await page.waitForFunction(
    (n) => document.querySelector(`#chain .chain-box[data-id="encoder:${n}"]`)?.dataset.state === 'down',
    chosen,
    { timeout: 30_000 },
  );
  step(`the chain shows the encoder of ${chosen} down`);

  // A file channel whose file goes missing says why in the list, while
  // the first channel keeps publishing.
  await page.click('#channel-new');
  await page.fill('#new-id', 'clip');
  await page.selectOption('#new-kind', 'file');
  await page.fill('#new-path', args.clip);
  await page.fill('#new-ladder', '90p:200');
  await page.uncheck('#new-audio');
  await page.click('#new-create');
  await page.waitForSelector('#channel-list tr[data-channel="clip"][data-running="true"]', { timeout: 30_000 });
  unlinkSync(args.clip);
  const rows = () => page.evaluate(() => [...document.querySelectorAll('#channel-list tr')].map((tr) => tr.textContent).join(' | '));
  // The first channel's row is marked "first"; its number is its segment.
  const firstSegment = () => page.evaluate(() => Number(
    [...document.querySelectorAll('#channel-list tr')]
      .find((tr) => tr.querySelector('.panel-note')?.textContent.includes('first'))
      ?.querySelector('td.num')?.textContent.replace(/\D/g, '') || 0,
  ));
  const firstBefore = await firstSegment();
  if (!(firstBefore > 0)) fail(`the first channel shows no segment: ${await rows()}`);
  await page.waitForFunction(
    () => document.querySelector('#channel-list tr[data-channel="clip"] td.state')?.textContent.includes('clip.mp4'),
    null,
    { timeout: 30_000 },
  ).catch(async () => fail(`the clip channel shows no error: ${await rows()}`));
  const clipState = await page.evaluate(() => document.querySelector('#channel-list tr[data-channel="clip"] td.state').textContent);
  for (let waited = 0; (await firstSegment()) < firstBefore + 2; waited += 500) {
    if (waited > 30_000) fail(`the first channel stopped publishing: ${await rows()}`);
    await page.waitForTimeout(500);
  }
  step(`channel clip shows "${clipState}" while the first channel keeps publishing (segment ${firstBefore} → ${await firstSegment()})`);
  await page.click('#channel-list tr[data-channel="clip"] .delete');
  await page.click('#channel-list tr[data-channel="clip"] .delete.armed');
  await page.waitForFunction(() => !document.querySelector('#channel-list tr[data-channel="clip"]'), null, { timeout: 20_000 });
} catch (e) {
  fail(e.message.split('\n')[0]);
} finally {
  clearTimeout(timer);
  await browser.close();
}
