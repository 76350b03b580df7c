// The operator map with a region's fleet, in headless Chromium. Run by tests/map.rs
// (and by `bench/run --only map`) with
//   HUB_URL  the hub's base URL
//   SENSORS  how many sensors the hub has
//   ALARMS   how many of them need action
//   SHOTS    the folder for the screenshot
// Prints `fleet: key=value ...` (time to every marker drawn, the tab's JS heap,
// frame times while panning) and `OK` at the end.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';

const HUB = process.env.HUB_URL;
const SENSORS = Number(process.env.SENSORS);
const ALARMS = Number(process.env.ALARMS);
const SHOTS = process.env.SHOTS;
assert.ok(HUB && SENSORS && SHOTS, 'HUB_URL, SENSORS, ALARMS and SHOTS are required');
await mkdir(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const errors = [];
try {
  const page = await (await browser.newContext({ viewport: { width: 1366, height: 850 }, locale: 'en-GB' })).newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  const started = Date.now();
  await page.goto(HUB + '/');
  await page.waitForSelector('body[data-ready="true"]', { timeout: 180_000 });
  // Drawn: the canvas paints on the next animation frame after the page is ready.
  const drawnAt = await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now())))));
  const readyMs = Date.now() - started;
  // The request, on the page's clock (before its navigation started).
  const requestAt = started - (await page.evaluate(() => performance.timeOrigin));
  // The tab's JavaScript heap with the whole fleet loaded (Chromium's figure).
  const heapMb = await page.evaluate(() => (performance.memory ? performance.memory.usedJSHeapSize / 2 ** 20 : 0));
  // Of that, the wait for the fleet's data (request to its last byte).
  const fetchMs = await page.evaluate(() => {
    const r = performance.getEntriesByType('resource').find((e) => /\/(map\/fleet\.json|api\/v1\/sensors)$/.test(new URL(e.name).pathname));
    return r ? r.responseEnd - r.startTime : 0;
  });

  // Where the page's time went: each step of main.js, ms from the navigation's start.
  const steps = await page.evaluate(() =>
    performance
      .getEntriesByType('mark')
      .filter((m) => m.name.startsWith('cityhub:'))
      .map((m) => `at_${m.name.slice(8)}_ms=${m.startTime.toFixed(0)}`)
      .join(' '),
  ) + ` at_request_ms=${requestAt.toFixed(0)} at_drawn_ms=${drawnAt.toFixed(0)}`;

  const markers = SENSORS > 2000 ? 'canvas' : 'dom';
  assert.equal(await page.$eval('body', (b) => b.dataset.markers), markers);
  assert.equal(await page.evaluate(() => window.cityhub.sensors.size), SENSORS, 'every sensor placed');
  if (markers === 'canvas') assert.equal(await page.locator('.leaflet-overlay-pane canvas').count(), 1, 'one canvas');

  // The list is the accessible path: every alarm is on it.
  await page.waitForFunction((n) => document.querySelectorAll('#actions li').length === n, ALARMS, { timeout: 30_000 });

  // Frame times while the operator drags the map across, and the redraw after.
  await page.evaluate(() => {
    window.longest_ = 0;
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) window.longest_ = Math.max(window.longest_, e.duration);
    }).observe({ type: 'longtask' });
    window.frames_ = [];
    let last = performance.now();
    const tick = (t) => {
      window.frames_.push(t - last);
      last = t;
      if (!window.stopFrames_) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  await page.mouse.move(700, 420);
  await page.mouse.down();
  for (let i = 1; i <= 30; i += 1) {
    await page.mouse.move(700 - i * 12, 420 - i * 6);
    await page.waitForTimeout(16);
  }
  await page.mouse.up();
  await page.waitForTimeout(1500);
  const frames = await page.evaluate(() => {
    window.stopFrames_ = true;
    return window.frames_.slice(1);
  });
  const longestTask = await page.evaluate(() => window.longest_);
  // One whole redraw of the marker canvas, timed directly.
  const redrawMs = await page.evaluate(() => {
    const r = window.cityhub.fleet;
    if (!r) return 0;
    const t = performance.now();
    r._redraw();
    // Reading a pixel back waits for the canvas to be painted, not only recorded.
    r._ctx.getImageData(0, 0, 1, 1);
    return performance.now() - t;
  });
  frames.sort((a, b) => a - b);
  const q = (p) => frames[Math.min(frames.length - 1, Math.floor(p * frames.length))];

  // A sensor from the list opens its popup on the map.
  const first = await page.$eval('#actions li button', (b) => b.dataset.sensor);
  await page.click(`#actions button[data-sensor="${first}"]`);
  await page.waitForSelector(`.leaflet-popup .popup[data-sensor="${first}"]`, { timeout: 10_000 });
  // The fleet's arrays carry one value a sensor: the popup reads the rest (every metric of its kind).
  await page.waitForFunction(
    (id) => {
      const e = window.cityhub.sensors.get(id);
      const rows = document.querySelectorAll(`.leaflet-popup .popup[data-sensor="${id}"] .values tr`).length;
      return rows > 1 && rows === window.cityhub.kinds.get(e.sensor.kind).metrics.length;
    },
    first,
    { timeout: 10_000 },
  );
  await page.screenshot({ path: `${SHOTS}/fleet-${SENSORS}.png` });

  // A click on a marker opens its popup too (canvas hit-testing).
  await page.keyboard.press('Escape');
  const other = await page.evaluate(() => {
    const e = [...window.cityhub.sensors.values()][7];
    const [lon, lat] = e.sensor.coordinates;
    window.cityhub.map.closePopup();
    window.cityhub.map.setView([lat, lon], 18, { animate: false });
    const p = window.cityhub.map.latLngToContainerPoint([lat, lon]);
    const box = document.getElementById('map').getBoundingClientRect();
    return { id: e.sensor.id, x: box.left + p.x, y: box.top + p.y };
  });
  await page.waitForTimeout(300);
  await page.mouse.click(other.x, other.y);
  await page.waitForSelector(`.leaflet-popup .popup[data-sensor="${other.id}"]`, { timeout: 10_000 });

  // A second operator opening the map (a browser of their own, nothing cached): the
  // hub has the fleet in memory by now, so this is the page's own time.
  const second = await (await browser.newContext({ viewport: { width: 1366, height: 850 }, locale: 'en-GB' })).newPage();
  second.on('pageerror', (e) => errors.push(e.message));
  const again = Date.now();
  await second.goto(HUB + '/');
  await second.waitForSelector('body[data-ready="true"]', { timeout: 180_000 });
  await second.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  const secondMs = Date.now() - again;
  assert.equal(await second.evaluate(() => window.cityhub.sensors.size), SENSORS, 'every sensor placed for the second operator');

  assert.deepEqual(errors, [], 'no page errors');
  console.log(
    `fleet: sensors=${SENSORS} markers=${markers} ready_ms=${readyMs} second_ready_ms=${secondMs} data_ms=${fetchMs.toFixed(0)} heap_mb=${heapMb.toFixed(0)} frames=${frames.length} ` +
      `frame_p50_ms=${q(0.5).toFixed(1)} frame_p95_ms=${q(0.95).toFixed(1)} frame_max_ms=${frames[frames.length - 1].toFixed(1)} ` +
      `longest_task_ms=${longestTask.toFixed(0)} redraw_ms=${redrawMs.toFixed(1)} ${steps}`,
  );
  console.log('OK');
} finally {
  await browser.close();
}
