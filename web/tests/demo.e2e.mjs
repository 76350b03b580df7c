// The demo's first minute, as a new user sees it: tests/demo.rs starts `cityhub
// demo` and runs this with
//   HUB_URL  the URL the demo printed
//   SHOTS    the folder for the screenshot (a CI artifact)
//   MODE     `loading`: only check the page while the history loads (it says so,
//            and no sensor is called silent), save demo-loading.png and stop;
//            `indicators`: open the Indicators view and wait until every chart has
//            a point (the older history fills them in), print what each has and
//            the milliseconds it took, save demo-indicators.png and stop
// It opens the map at 1280x800, waits until the "Needs action" list holds an alarm
// (not only silent sensors) and the recent history is loaded, then prints one JSON line:
// the list's states, how many markers lie outside the map or under the legend, and
// the milliseconds from opening the page to that moment; and saves demo-live.png.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';

const HUB = process.env.HUB_URL;
const SHOTS = process.env.SHOTS;
assert.ok(HUB && SHOTS, 'HUB_URL and SHOTS are required');
await mkdir(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, locale: 'en-GB' });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const t0 = Date.now();
  await page.goto(HUB + '/');
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  if (process.env.MODE === 'indicators') {
    await page.goto(HUB + '/#indicators');
    await page.waitForSelector('#indicators-view[data-ready="true"] article.indicator', { timeout: 60_000 });
    // Every chart with a point, and the daily PM10 chart with MIN_DAILY_POINTS days:
    // more than the recent day of history holds, so the older history reached the view.
    const minDaily = Number(process.env.MIN_DAILY_POINTS || 1);
    await page.waitForFunction(
      (min) =>
        [...document.querySelectorAll('article.indicator')].every((a) => Number(a.dataset.points || 0) > 0) &&
        Number(document.querySelector('#indicator-pm10_daily_mean')?.dataset.points || 0) >= min,
      minDaily,
      { timeout: 300_000, polling: 1000 },
    );
    const elapsedMs = Date.now() - t0;
    const cards = await page.evaluate(() =>
      Object.fromEntries([...document.querySelectorAll('article.indicator')].map((a) => [a.dataset.indicator, Number(a.dataset.points)])),
    );
    const notice = await page.evaluate(() => document.getElementById('history').textContent);
    await page.screenshot({ path: `${SHOTS}/demo-indicators.png`, fullPage: true });
    assert.deepEqual(errors, [], 'page errors');
    console.log(JSON.stringify({ cards, elapsedMs, notice }));
    process.exit(0);
  }
  if (process.env.MODE === 'loading') {
    await page.waitForFunction(() => !document.getElementById('history').hidden, null, { timeout: 10_000 });
    const seen = await page.evaluate(() => ({
      notice: document.getElementById('history').textContent,
      markers: document.querySelectorAll('.leaflet-marker-icon[data-sensor]').length,
      silentMarkers: document.querySelectorAll('.leaflet-marker-icon[data-sensor][data-state="stale"]').length,
      silentListed: document.querySelectorAll('#actions button[data-state="stale"]').length,
    }));
    await page.screenshot({ path: `${SHOTS}/demo-loading.png` });
    assert.deepEqual(errors, [], 'page errors');
    console.log(JSON.stringify(seen));
    process.exit(0);
  }
  // Alive: an alarm on the list, and the recent history loaded (older history may
  // still be loading behind the live map).
  await page.waitForFunction(
    () => {
      const h = document.getElementById('history');
      return document.querySelector('#actions button[data-state="alarm"]') && (h.hidden || h.dataset.phase === 'older');
    },
    null,
    { timeout: 90_000, polling: 250 },
  );
  const elapsedMs = Date.now() - t0;
  const result = await page.evaluate(() => {
    const states = {};
    for (const b of document.querySelectorAll('#actions button')) states[b.dataset.state] = (states[b.dataset.state] || 0) + 1;
    const map = document.getElementById('map').getBoundingClientRect();
    const legend = document.querySelector('.legend').getBoundingClientRect();
    let outside = 0;
    let underLegend = 0;
    const markers = document.querySelectorAll('.leaflet-marker-icon[data-sensor]');
    for (const m of markers) {
      const r = m.getBoundingClientRect();
      const x = r.left + r.width / 2;
      const y = r.top + r.height / 2;
      if (x < map.left || x > map.right || y < map.top || y > map.bottom) outside += 1;
      else if (x >= legend.left && x <= legend.right && y >= legend.top && y <= legend.bottom) underLegend += 1;
    }
    return { states, markers: markers.length, outside, underLegend };
  });
  await page.screenshot({ path: `${SHOTS}/demo-live.png` });
  assert.deepEqual(errors, [], 'page errors');
  // A live fleet does not look silent: at most a few faulty sensors are.
  const stale = result.states.stale || 0;
  assert.ok(stale <= result.markers * 0.05, `${stale} of ${result.markers} sensors shown silent: ${JSON.stringify(result)}`);
  console.log(JSON.stringify({ ...result, elapsedMs }));
} finally {
  await browser.close();
}
