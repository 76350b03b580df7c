// The map judges day, night and twilight as the hub does: both are tested against
// one table of the sun's altitude from NREL's SPA (tests/fixtures/sun_cases.json,
// written by scripts/sun-cases.py; the hub's side is in core/src/sun.rs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { daylight, sunAltitude } from '../src/state.js';

const table = JSON.parse(
  readFileSync(new URL('../../tests/fixtures/sun_cases.json', import.meta.url), 'utf8'),
);

test('the map agrees with the reference table', () => {
  let judged = 0;
  const wrong = [];
  let worst = 0;
  for (const [lat, lon, time, alt] of table.cases) {
    const got = (sunAltitude(Date.parse(time), lat, lon) * 180) / Math.PI;
    worst = Math.max(worst, Math.abs(got - alt));
    // Within 0.5° of a limit a case says nothing about either side.
    let want;
    if (alt > 6.5) want = 'day';
    else if (alt < -6.5) want = 'night';
    else if (Math.abs(alt) < 5.5) want = 'twilight';
    else continue;
    judged += 1;
    const phase = daylight((got * Math.PI) / 180);
    if (phase !== want) wrong.push(`${lat},${lon} ${time}: ${alt}° (suncalc ${got.toFixed(3)}°) ${phase}`);
  }
  assert.ok(judged > 2000, `only ${judged} cases judged`);
  assert.deepEqual(wrong, []);
  assert.ok(worst < 0.5, `suncalc is ${worst.toFixed(3)}° off the reference at worst`);
});
