// How the map judges a sensor, from its latest values and its kind's `map` rule
// (config/kinds.toml, served by /api/v1/kinds). Pure functions: the browser and
// the unit tests (web/tests/state.test.mjs) run the same code.

import { getPosition } from 'suncalc';

/**
 * The sun's altitude in radians at `timeMs`, `lat`, `lon`. suncalc 2 gives degrees
 * (refraction included); the limits below are radians.
 */
export function sunAltitude(timeMs, lat, lon) {
  return (getPosition(new Date(timeMs), lat, lon).altitude * Math.PI) / 180;
}

/** The sun this far above the horizon is day; this far below, night (civil twilight). */
export const DAY_ALTITUDE = (6 * Math.PI) / 180;
export const NIGHT_ALTITUDE = (-6 * Math.PI) / 180;

/** 'day', 'night' or 'twilight' (when lamps may rightly be either way). */
export function daylight(altitude) {
  if (altitude > DAY_ALTITUDE) return 'day';
  if (altitude < NIGHT_ALTITUDE) return 'night';
  return 'twilight';
}

/** Milliseconds of the sensor's last report, or null if it never reported. */
export function lastReport(sensor) {
  let last = sensor.last_seen ? Date.parse(sensor.last_seen) : null;
  for (const r of Object.values(sensor.latest || {})) {
    const t = Date.parse(r.time);
    if (!Number.isNaN(t) && (last === null || t > last)) last = t;
  }
  return last;
}

/**
 * The sensor's state: `ok`, `warn`, `alarm` (needs action), `activity` (with a
 * `level`), `stale` (silent for `staleAfter` cadences, or never heard) or `none`
 * (no rule, or no value of the rule's metric yet).
 * `sunAltitude(timeMs, lat, lon)` gives the sun's altitude in radians.
 */
export function judge(sensor, kind, now, sunAltitude, staleAfter = 3) {
  const rule = kind && kind.map;
  const metric = (rule && rule.metric) || (kind && kind.main_metric) || null;
  const reading = metric ? (sensor.latest || {})[metric] : undefined;
  const base = {
    metric,
    value: reading ? reading.value : null,
    unit: reading ? reading.unit : null,
    time: reading ? reading.time : null,
  };
  const last = lastReport(sensor);
  if (last === null) return { ...base, state: 'stale', reason: 'never', silentMs: null };
  const cadenceMs = ((kind && kind.cadence_s) || 900) * 1000;
  if (now - last > staleAfter * cadenceMs) {
    return { ...base, state: 'stale', reason: 'silent', silentMs: now - last };
  }
  if (!rule || !reading) return { ...base, state: 'none' };
  const v = reading.value;
  switch (rule.rule) {
    case 'above':
      if (v >= rule.alarm) return { ...base, state: 'alarm', reason: 'above', severity: v / rule.alarm };
      if (v >= rule.warn) return { ...base, state: 'warn', reason: 'above' };
      return { ...base, state: 'ok', reason: 'below' };
    case 'lamp': {
      const lit = v > rule.lit_above;
      const [lon, lat] = sensor.coordinates;
      const phase = daylight(sunAltitude(Date.parse(reading.time), lat, lon));
      if (lit && phase === 'day') return { ...base, state: 'alarm', reason: 'lit_by_day', severity: 1 };
      if (!lit && phase === 'night') return { ...base, state: 'alarm', reason: 'dark_at_night', severity: 1 };
      return { ...base, state: 'ok', reason: lit ? 'lit' : 'dark' };
    }
    case 'activity': {
      const level = rule.steps.filter((s) => v >= s).length;
      return { ...base, state: 'activity', reason: 'activity', level };
    }
    default:
      return { ...base, state: 'none' };
  }
}

/**
 * What needs action, most urgent first: alarms before silent sensors; alarms by
 * how far past their limit (value / alarm, lamp faults count as 1); silent sensors
 * by how long they have been silent, the never-heard last. `entries` are
 * `{ sensor, verdict }`.
 */
export function actionItems(entries) {
  const rank = (e) => (e.verdict.state === 'alarm' ? 0 : 1);
  return entries
    .filter((e) => e.verdict.state === 'alarm' || e.verdict.state === 'stale')
    .sort((a, b) => {
      const r = rank(a) - rank(b);
      if (r !== 0) return r;
      if (rank(a) === 0) {
        const d = (b.verdict.severity || 0) - (a.verdict.severity || 0);
        if (d !== 0) return d;
      } else {
        const sa = a.verdict.silentMs === null ? -1 : a.verdict.silentMs;
        const sb = b.verdict.silentMs === null ? -1 : b.verdict.silentMs;
        if (sa !== sb) return sb - sa;
      }
      return a.sensor.id < b.sensor.id ? -1 : a.sensor.id > b.sensor.id ? 1 : 0;
    });
}

/**
 * Reports per minute over a sliding window: `add(n, at)` counts n readings
 * arriving at `at` ms, `rate(now)` gives how many arrived in the last minute.
 */
export class RateCounter {
  constructor(windowMs = 60_000) {
    this.windowMs = windowMs;
    this.events = [];
    this.total = 0;
  }
  add(n, at) {
    this.events.push([at, n]);
    this.total += n;
  }
  rate(now) {
    while (this.events.length && this.events[0][0] <= now - this.windowMs) this.events.shift();
    return this.events.reduce((s, [, n]) => s + n, 0);
  }
}
