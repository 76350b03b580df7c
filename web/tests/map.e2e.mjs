// End-to-end test of the operator map in headless Chromium, driven by
// tests/map.rs: that test starts a hub on simulated data plus a few sensors of
// known state, then runs `node web/tests/map.e2e.mjs` with
//   HUB_URL     the hub's base URL
//   SHOTS       the folder for screenshots (a CI artifact)
//   EXPECT      JSON: { sensorId: expected marker state, ... } for the crafted sensors
//   LIVE_SENSOR the sensor the harness turns red when asked
// Protocol on stdio for the live step: this script prints `PUBLISH` and waits for
// a line on stdin, sent once the harness has published the update.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { mkdir } from 'node:fs/promises';
import { getPosition } from 'suncalc';

const HUB = process.env.HUB_URL;
const SHOTS = process.env.SHOTS;
const EXPECT = JSON.parse(process.env.EXPECT);
const LIVE_SENSOR = process.env.LIVE_SENSOR;
const LAMPS = JSON.parse(process.env.LAMPS || '{}');
const OPERATOR_TOKEN = process.env.OPERATOR_TOKEN;
assert.ok(HUB && SHOTS && LIVE_SENSOR, 'HUB_URL, SHOTS, EXPECT and LIVE_SENSOR are required');
await mkdir(SHOTS, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
const step = (m) => console.log(`step: ${m}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const errors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 850 }, locale: 'en-GB' });
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  // No network here: tiles fail, and the map must work without them.
  const tileFailures = [];
  page.on('requestfailed', (r) => {
    if (!r.url().startsWith(HUB)) tileFailures.push(r.url());
  });

  // ---- load: one marker per placed sensor, each kind present ----------------
  await page.goto(HUB + '/');
  await page.waitForSelector('body[data-ready="true"]', { timeout: 30_000 });
  const api = await (await fetch(`${HUB}/api/v1/sensors`)).json();
  const kinds = (await (await fetch(`${HUB}/api/v1/kinds`)).json()).kinds;
  const placed = api.features.filter((f) => f.geometry);
  const markers = await page.$$eval('.leaflet-marker-icon[data-sensor]', (els) =>
    els.map((e) => ({ id: e.dataset.sensor, kind: e.dataset.kind, state: e.dataset.state, cls: e.className })),
  );
  assert.equal(markers.length, placed.length, 'one marker per sensor with a position');
  assert.deepEqual(new Set(markers.map((m) => m.id)), new Set(placed.map((f) => String(f.id))));
  for (const k of kinds) {
    assert.ok(markers.some((m) => m.kind === k.name), `no marker of kind ${k.name}`);
  }
  for (const m of markers) {
    assert.match(m.cls, new RegExp(`\\bk-${m.kind}\\b`));
    assert.match(m.cls, new RegExp(`\\bs-${m.state}\\b`));
  }
  step(`${markers.length} markers of ${kinds.length} kinds; ${tileFailures.length} tile requests failed (no network)`);

  // ---- colours of the sensors whose state the harness set ----------------------
  const byId = new Map(markers.map((m) => [m.id, m]));
  const colour = async (id) =>
    page.$eval(`.leaflet-marker-icon[data-sensor="${id}"] > i`, (e) => getComputedStyle(e).backgroundColor);
  const expected = { ...EXPECT };
  // A lamp's fault depends on the sun at its place and report time: judge it here
  // on our own (civil twilight, ±6°) so the test holds at any hour.
  for (const [id, { power, lat, lon, time }] of Object.entries(LAMPS)) {
    // suncalc 2 gives the altitude in degrees (the map converts it, web/src/state.js).
    const alt = getPosition(new Date(time), lat, lon).altitude;
    const lit = power > 5;
    expected[id] = (lit && alt > 6) || (!lit && alt < -6) ? 'alarm' : 'ok';
  }
  const rgb = { ok: 'rgb(26, 152, 80)', warn: 'rgb(240, 162, 2)', alarm: 'rgb(215, 25, 28)', stale: 'rgb(255, 255, 255)' };
  for (const [id, want] of Object.entries(expected)) {
    const m = byId.get(id);
    assert.ok(m, `no marker for ${id}`);
    const [state, level] = want.split(':');
    assert.equal(m.state, state, `${id}: state`);
    if (level !== undefined) assert.match(m.cls, new RegExp(`\\bl-${level}\\b`), `${id}: activity level`);
    if (rgb[state]) assert.equal(await colour(id), rgb[state], `${id}: colour`);
  }
  step(`crafted sensors have their expected states: ${JSON.stringify(expected)}`);
  await page.screenshot({ path: `${SHOTS}/1-overview.png` });

  // ---- the action panel: what needs action, most urgent first -----------------
  const actions = await page.$$eval('#actions button', (bs) => bs.map((b) => ({ id: b.dataset.sensor, state: b.dataset.state })));
  const alarms = markers.filter((m) => m.state === 'alarm').map((m) => m.id).sort();
  const stale = markers.filter((m) => m.state === 'stale').map((m) => m.id).sort();
  assert.deepEqual(actions.filter((a) => a.state === 'alarm').map((a) => a.id).sort(), alarms, 'every alarm is listed');
  assert.deepEqual(actions.filter((a) => a.state === 'stale').map((a) => a.id).sort(), stale, 'every silent sensor is listed');
  const firstStale = actions.findIndex((a) => a.state === 'stale');
  if (firstStale >= 0) assert.ok(actions.slice(firstStale).every((a) => a.state === 'stale'), 'alarms come before silent sensors');
  const alarmIds = actions.filter((a) => a.state === 'alarm').map((a) => a.id);
  // The worst bin (crafted at 97 %) outranks the full one at 85 %, by value over limit.
  if (EXPECT['map-bin-worst'] && EXPECT['map-bin-full']) {
    assert.ok(alarmIds.indexOf('map-bin-worst') < alarmIds.indexOf('map-bin-full'), 'worse first');
  }
  // The long-silent bin is listed before the never-heard one.
  assert.ok(actions.findIndex((a) => a.id === 'map-bin-silent') < actions.findIndex((a) => a.id === 'map-bin-never'));
  step(`panel: ${actions.length} items, ${alarms.length} alarms then ${stale.length} silent`);

  // A panel item zooms to its marker and opens its popup.
  await page.click('#actions button[data-sensor="map-air-high"]');
  await page.waitForSelector('.leaflet-popup .popup[data-sensor="map-air-high"]');
  const zoom = await page.evaluate(() => window.cityhub.map.getZoom());
  assert.ok(zoom >= 17, `zoomed in to ${zoom}`);
  const centre = await page.evaluate(() => window.cityhub.map.getCenter());
  const air = placed.find((f) => f.id === 'map-air-high').geometry.coordinates;
  assert.ok(Math.abs(centre.lat - air[1]) < 1e-3 && Math.abs(centre.lng - air[0]) < 1e-3, 'centred on the sensor');
  await page.waitForTimeout(400);
  await page.screenshot({ path: `${SHOTS}/2-panel-item-zoomed.png` });
  step('a panel item zooms to its marker and opens its popup');

  // ---- popup: name, id, every latest value with unit and age, a 24 h chart ----
  await page.keyboard.press('Escape');
  await page.evaluate(() => window.cityhub.map.closePopup());
  const simBin = placed.find((f) => f.properties.kind === 'waste_bin' && !String(f.id).startsWith('map-'));
  assert.ok(simBin, 'a simulated bin');
  await page.evaluate((id) => {
    const e = window.cityhub.sensors.get(id);
    window.cityhub.map.setView(e.marker.getLatLng(), 17, { animate: false });
    e.marker.openPopup();
  }, String(simBin.id));
  const popup = page.locator(`.leaflet-popup .popup[data-sensor="${simBin.id}"]`);
  await popup.waitFor();
  assert.ok((await popup.locator('h3').textContent()).length > 0);
  assert.ok((await popup.locator('.id').textContent()).includes(String(simBin.id)));
  const rows = await popup.locator('tr[data-metric]').evaluateAll((trs) =>
    trs.map((tr) => ({ metric: tr.dataset.metric, value: tr.querySelector('.v').textContent, age: tr.querySelector('.age').textContent })),
  );
  const latest = simBin.properties.latest;
  assert.deepEqual(rows.map((r) => r.metric).sort(), Object.keys(latest).sort(), 'every latest value');
  for (const r of rows) {
    assert.ok(r.value.endsWith(latest[r.metric].unit), `${r.metric} shows its unit: ${r.value}`);
    assert.match(r.age, /\d/, `${r.metric} shows its age`);
  }
  const chart = popup.locator('.chart');
  await page.waitForFunction((id) => {
    const c = document.querySelector(`.popup[data-sensor="${id}"] .chart`);
    return c && c.dataset.state !== 'loading';
  }, String(simBin.id));
  assert.equal(await chart.getAttribute('data-state'), 'drawn', 'the chart is drawn');
  const points = Number(await chart.getAttribute('data-points'));
  const from = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  const day = await (
    await fetch(`${HUB}/api/v1/sensors/${simBin.id}/readings?metric=fill_level&from=${encodeURIComponent(from)}&limit=10000`)
  ).json();
  assert.ok(points > 10, `a day of readings: ${points}`);
  assert.ok(Math.abs(points - day.readings.length) <= 2, `chart points ${points} vs readings ${day.readings.length}`);
  assert.equal(await chart.locator('canvas').count(), 1, 'a canvas');
  await page.waitForTimeout(400); // the popup's fade-in
  await page.screenshot({ path: `${SHOTS}/3-popup-chart.png` });
  step(`popup of ${simBin.id}: ${rows.length} values, chart of ${points} points`);
  await page.evaluate(() => window.cityhub.map.closePopup());

  // ---- the public register: "what is this sensor?" in the popup ----------------
  await page.evaluate(() => {
    const e = window.cityhub.sensors.get('map-bin-never');
    window.cityhub.map.setView(e.marker.getLatLng(), 17, { animate: false });
    e.marker.openPopup();
  });
  const reg = page.locator('.leaflet-popup .popup[data-sensor="map-bin-never"] details.register');
  await reg.waitFor();
  assert.equal(await reg.locator('summary').textContent(), 'What is this sensor?');
  await reg.locator('summary').click();
  const regText = await reg.locator('dl').textContent();
  assert.match(regText, /Fill level for collection rounds/);
  assert.match(regText, /Settore Ambiente/);
  assert.match(regText, /none captured/);
  await page.waitForTimeout(300);
  await page.screenshot({ path: `${SHOTS}/3b-popup-register.png` });
  await page.evaluate(() => window.cityhub.map.closePopup());
  step('the popup says what the sensor is for and who answers for it');

  // ---- live: the harness publishes, the marker turns red without a reload -----
  const before = await page.$eval(`.leaflet-marker-icon[data-sensor="${LIVE_SENSOR}"]`, (e) => e.dataset.state);
  const rateBefore = Number(await page.textContent('#rate-n'));
  const navigations = [];
  page.on('framenavigated', (f) => navigations.push(f.url()));
  console.log('PUBLISH');
  const ack = await lines.next();
  assert.equal(ack.value, 'published');
  await page.waitForSelector(`.leaflet-marker-icon[data-sensor="${LIVE_SENSOR}"][data-state="alarm"]`, { timeout: 30_000 });
  assert.equal(await colour(LIVE_SENSOR), rgb.alarm);
  await page.waitForSelector(`#actions button[data-sensor="${LIVE_SENSOR}"]`, { timeout: 10_000 });
  const rateAfter = Number(await page.textContent('#rate-n'));
  assert.ok(rateAfter >= 1 && rateAfter >= rateBefore, `readings/min counted: ${rateBefore} -> ${rateAfter}`);
  assert.deepEqual(navigations, [], 'no reload');
  await page.evaluate((id) => {
    const e = window.cityhub.sensors.get(id);
    window.cityhub.map.setView(e.marker.getLatLng(), 16, { animate: false });
  }, LIVE_SENSOR);
  await page.screenshot({ path: `${SHOTS}/4-live-update.png` });
  step(`live: ${LIVE_SENSOR} went ${before} -> alarm, counter ${rateAfter}/min, no reload`);

  // ---- alerts: the hub's open alerts on the panel, live, and acknowledged ------
  const apiAlerts = async () => (await (await fetch(`${HUB}/api/v1/alerts?state=open,acknowledged&limit=1000`)).json()).alerts;
  // The live bin's alert arrives as `event: alert` (no reload).
  await page.waitForFunction(
    (id) => [...document.querySelectorAll('#alerts li.alert .what')].some((e) => e.textContent.includes(id)),
    LIVE_SENSOR,
    { timeout: 30_000 },
  );
  const open = await apiAlerts();
  for (const id of ['map-bin-worst', 'map-bin-full', 'map-air-high']) {
    assert.ok(open.some((a) => a.sensor === id), `the hub raised no alert for ${id}`);
  }
  await page.waitForFunction((n) => document.querySelectorAll('#alerts li.alert').length === n, open.length, { timeout: 10_000 });
  assert.match(await page.textContent('#alerts-title'), new RegExp(`^Alerts \\(${open.length}\\)$`));
  assert.equal(await page.locator('#alerts button.ack-open').count(), 0, 'no acknowledge without the operator token');
  const worst = open.find((a) => a.sensor === 'map-bin-worst');
  // A wrong token is refused as soon as it is given, says so, and is not kept.
  await page.click('#operator-summary');
  await page.fill('#operator-token', 'not-the-operator-token');
  await page.click('#operator-save');
  await page.waitForSelector('#alerts-message:not([hidden])');
  assert.match(await page.textContent('#alerts-message'), /refused/);
  await page.waitForSelector('#operator-token:not([hidden])');
  assert.equal(await page.locator('#alerts button.ack-open').count(), 0, 'a refused token is forgotten');
  await page.fill('#operator-token', OPERATOR_TOKEN);
  await page.click('#operator-save');
  // The map says who is signed in.
  await page.waitForSelector('#operator-summary[data-who="bootstrap-operator"]', { timeout: 10_000 });
  assert.equal(await page.textContent('#operator-summary'), 'Signed in as bootstrap-operator (operator)');
  await page.click(`#alerts li[data-alert="${worst.id}"] button.ack-open`);
  await page.fill(`#alerts li[data-alert="${worst.id}"] form.ack input`, 'crew sent');
  await page.click(`#alerts li[data-alert="${worst.id}"] form.ack button`);
  await page.waitForSelector(`#alerts li.st-acknowledged[data-alert="${worst.id}"]`, { timeout: 10_000 });
  const acked = (await apiAlerts()).find((a) => a.id === worst.id);
  assert.equal(acked.state, 'acknowledged');
  assert.equal(acked.ack_note, 'crew sent');
  await page.screenshot({ path: `${SHOTS}/7-alerts.png` });
  step(`alerts: ${open.length} on the panel, ${LIVE_SENSOR}'s arrived live, one acknowledged with a note`);

  // ---- indicators: a chart per indicator, the limit drawn where there is one ----
  await page.click('#nav-indicators');
  await page.waitForSelector('#indicators-view[data-ready="true"]', { timeout: 30_000 });
  assert.equal(await page.isVisible('#map'), false, 'the map gives way to the indicators');
  const inds = (await (await fetch(`${HUB}/api/v1/indicators`)).json()).indicators;
  assert.equal(await page.locator('#indicators-view article.indicator').count(), inds.length);
  const pm10 = page.locator('article[data-indicator="pm10_daily_mean"]');
  assert.equal(await pm10.locator('canvas').count(), 1, 'a PM10 chart');
  assert.ok(Number(await pm10.getAttribute('data-rows')) >= 1);
  assert.match(await pm10.locator('.u-legend').textContent(), /Limit 50/);
  const trips = page.locator('article[data-indicator="bike_trips_per_day"]');
  assert.equal(await trips.locator('canvas').count(), 1, 'a bicycle chart');
  await page.screenshot({ path: `${SHOTS}/8-indicators.png`, fullPage: true });
  await page.click('#nav-map');
  await page.waitForSelector('#map', { state: 'visible' });
  step(`indicators: ${inds.length} cards, PM10 with its limit line`);

  // ---- layer toggle ------------------------------------------------------------
  await page.uncheck('.legend input[data-kind="streetlight"]');
  assert.equal(await page.locator('.leaflet-marker-icon[data-kind="streetlight"]').count(), 0, 'lamps hidden');
  await page.check('.legend input[data-kind="streetlight"]');
  assert.ok((await page.locator('.leaflet-marker-icon[data-kind="streetlight"]').count()) > 0, 'lamps back');
  step('layer toggle hides and shows a kind');

  // ---- keyboard: reach a marker with Tab, open it with Enter -------------------
  await page.evaluate(() => window.cityhub.map.fitBounds(window.cityhub.map.getBounds()));
  await page.focus('#lang');
  let reached = null;
  for (let i = 0; i < 40 && !reached; i += 1) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement && document.activeElement.dataset && document.activeElement.dataset.sensor);
  }
  assert.ok(reached, 'a marker is reachable with Tab');
  await page.keyboard.press('Enter');
  await page.waitForSelector(`.leaflet-popup .popup[data-sensor="${reached}"]`, { timeout: 5_000 });
  step(`keyboard: Tab reached ${reached}, Enter opened its popup`);
  await page.evaluate(() => window.cityhub.map.closePopup());

  // ---- Italian, tablet width ---------------------------------------------------
  const tablet = await browser.newContext({ viewport: { width: 768, height: 1024 }, locale: 'it-IT', hasTouch: true });
  const tp = await tablet.newPage();
  tp.on('pageerror', (e) => errors.push(e.message));
  await tp.goto(HUB + '/');
  await tp.waitForSelector('body[data-ready="true"]', { timeout: 30_000 });
  assert.equal(await tp.getAttribute('html', 'lang'), 'it');
  assert.equal(await tp.textContent('#title'), 'Mappa operativa');
  assert.match(await tp.textContent('#rate-label'), /letture\/min/);
  assert.equal(await tp.isVisible('#panel'), false, 'the list is folded away at tablet width');
  await tp.tap('#panel-toggle');
  assert.equal(await tp.isVisible('#panel'), true);
  assert.match(await tp.textContent('#panel-title'), /^Da gestire \(\d+\)$/);
  const width = await tp.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 768, `no sideways scrolling at tablet width (${width})`);
  await tp.screenshot({ path: `${SHOTS}/5-tablet-italian.png` });
  await tp.tap('#actions button[data-sensor="map-bin-worst"]');
  await tp.waitForSelector('.leaflet-popup .popup[data-sensor="map-bin-worst"]');
  assert.match(await tp.textContent('.leaflet-popup .verdict'), /limite/);
  await tp.evaluate(() => {
    const e = window.cityhub.sensors.get('map-bin-never');
    e.marker.openPopup();
  });
  await tp.waitForSelector('.leaflet-popup .popup[data-sensor="map-bin-never"] details.register');
  assert.equal(await tp.textContent('.leaflet-popup details.register summary'), 'Che cos’è questo sensore?');
  assert.match(await tp.textContent('.leaflet-popup details.register dl'), /Livello di riempimento/);
  await tp.evaluate(() => window.cityhub.sensors.get('map-bin-worst').marker.openPopup());
  await tp.waitForSelector('.leaflet-popup .popup[data-sensor="map-bin-worst"]');
  await tp.waitForTimeout(400);
  await tp.screenshot({ path: `${SHOTS}/6-tablet-popup.png` });
  // Switch back to English by the header button.
  await tp.tap('#lang');
  assert.equal(await tp.textContent('#title'), 'Operator map');
  step('Italian by browser language, panel folds at tablet width, switch to English');

  assert.deepEqual(errors, [], 'no script errors');
  console.log('OK');
} finally {
  await browser.close();
  stdin.close();
}
