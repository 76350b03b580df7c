// Unit tests of the map's state rules (node --test).
import test from 'node:test';
import assert from 'node:assert/strict';
import { judge, actionItems, daylight, lastReport, RateCounter } from '../src/state.js';

const NOW = Date.parse('2026-11-24T12:00:00Z');
const ago = (s) => new Date(NOW - s * 1000).toISOString();
const bin = { name: 'waste_bin', cadence_s: 1200, main_metric: 'fill_level', map: { rule: 'above', metric: 'fill_level', warn: 50, alarm: 80 } };
const lamp = { name: 'streetlight', cadence_s: 600, main_metric: 'power', map: { rule: 'lamp', metric: 'power', lit_above: 5 } };
const bikes = { name: 'bike_counter', cadence_s: 900, main_metric: 'count_in', map: { rule: 'activity', metric: 'count_in', steps: [1, 10, 40] } };
const plain = { name: 'noise', cadence_s: 60, main_metric: 'db' };
const sensor = (id, latest, extra = {}) => ({ id, coordinates: [10, 45], latest, ...extra });
const v = (value, s = 60, unit = '%') => ({ value, unit, time: ago(s) });
const noSun = () => 0;

test('bin fill: green below 50, amber from 50, red from 80, at the boundaries', () => {
  const at = (x) => judge(sensor('b', { fill_level: v(x) }), bin, NOW, noSun).state;
  assert.equal(at(0), 'ok');
  assert.equal(at(49.9), 'ok');
  assert.equal(at(50), 'warn');
  assert.equal(at(79.9), 'warn');
  assert.equal(at(80), 'alarm');
  assert.equal(at(100), 'alarm');
  assert.equal(judge(sensor('b', { fill_level: v(100) }), bin, NOW, noSun).severity, 100 / 80);
});

test('stale after three cadences without a report, whatever the value', () => {
  const s = (age) => judge(sensor('b', { fill_level: v(90, age) }), bin, NOW, noSun);
  assert.equal(s(3 * 1200).state, 'alarm');
  assert.equal(s(3 * 1200 + 1).state, 'stale');
  assert.equal(s(3 * 1200 + 1).silentMs, (3 * 1200 + 1) * 1000);
  const never = judge(sensor('n', {}), bin, NOW, noSun);
  assert.equal(never.state, 'stale');
  assert.equal(never.reason, 'never');
  // last_seen counts as a report even when the rule's metric is missing.
  const other = judge(sensor('o', { battery: v(80) }), bin, NOW, noSun);
  assert.equal(other.state, 'none');
});

test('lamp: lit by day and dark at night are faults; twilight is neither', () => {
  const deg = (d) => () => (d * Math.PI) / 180;
  const j = (power, alt) => judge(sensor('l', { power: v(power, 60, 'W') }), lamp, NOW, deg(alt));
  assert.deepEqual([j(90, 30).state, j(90, 30).reason], ['alarm', 'lit_by_day']);
  assert.deepEqual([j(0, -20).state, j(0, -20).reason], ['alarm', 'dark_at_night']);
  assert.deepEqual([j(90, -20).state, j(90, -20).reason], ['ok', 'lit']);
  assert.deepEqual([j(0, 30).state, j(0, 30).reason], ['ok', 'dark']);
  assert.equal(j(90, 2).state, 'ok');
  assert.equal(j(0, -3).state, 'ok');
  assert.equal(j(5, 30).state, 'ok', 'at the threshold the lamp counts as off');
  assert.equal(daylight((7 * Math.PI) / 180), 'day');
  assert.equal(daylight((-7 * Math.PI) / 180), 'night');
  assert.equal(daylight(0), 'twilight');
});

test('the lamp is judged at its report time and place', () => {
  let seen = null;
  const spy = (t, lat, lon) => {
    seen = [t, lat, lon];
    return 1;
  };
  const s = sensor('l', { power: v(90, 300, 'W') }, { coordinates: [10.02, 45.13] });
  judge(s, lamp, NOW, spy);
  assert.deepEqual(seen, [NOW - 300_000, 45.13, 10.02]);
});

test('bike activity levels', () => {
  const lvl = (x) => judge(sensor('c', { count_in: v(x, 60, 'count') }), bikes, NOW, noSun).level;
  assert.deepEqual([0, 1, 9, 10, 39, 40, 500].map(lvl), [0, 1, 1, 2, 2, 3, 3]);
  assert.equal(judge(sensor('c', { count_in: v(3, 60, 'count') }), bikes, NOW, noSun).state, 'activity');
});

test('a kind with no rule is neutral but can still be stale', () => {
  assert.equal(judge(sensor('x', { db: v(70, 30, 'dB') }), plain, NOW, noSun).state, 'none');
  assert.equal(judge(sensor('x', { db: v(70, 181, 'dB') }), plain, NOW, noSun).state, 'stale');
});

test('lastReport takes the newest of last_seen and the latest values', () => {
  assert.equal(lastReport(sensor('a', {})), null);
  assert.equal(lastReport(sensor('a', { a: v(1, 50), b: v(1, 10) })), NOW - 10_000);
  assert.equal(lastReport(sensor('a', { a: v(1, 50) }, { last_seen: ago(5) })), NOW - 5_000);
});

test('action items: alarms by how far past the limit, then the longest silent, never-heard last', () => {
  const e = (id, latest, kind = bin) => ({ sensor: sensor(id, latest), verdict: judge(sensor(id, latest), kind, NOW, noSun) });
  const items = actionItems([
    e('ok', { fill_level: v(10) }),
    e('warn', { fill_level: v(60) }),
    e('full', { fill_level: v(85) }),
    e('worst', { fill_level: v(99) }),
    e('quiet-2h', { fill_level: v(10, 7200) }),
    e('quiet-9h', { fill_level: v(10, 9 * 3600) }),
    e('never', {}),
    e('bright', { power: v(90, 60, 'W') }, lamp),
  ]);
  // The lamp's sun is at 0 rad: twilight, so no fault.
  assert.deepEqual(items.map((i) => i.sensor.id), ['worst', 'full', 'quiet-9h', 'quiet-2h', 'never']);
});

test('readings per minute over a sliding window', () => {
  const r = new RateCounter(60_000);
  r.add(3, 0);
  r.add(2, 30_000);
  assert.equal(r.rate(59_999), 5);
  assert.equal(r.rate(60_000), 2);
  assert.equal(r.rate(90_001), 0);
  assert.equal(r.total, 5);
});
