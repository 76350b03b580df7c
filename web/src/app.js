// The map's shared state and helpers: the `app` object every part reads, `$`, `T`, JSON fetches.
import { RateCounter } from './state.js';
import { initialLang, strings } from './i18n.js';

export const DAY_MS = 24 * 3600 * 1000;

export const app = {
  lang: initialLang(),
  settings: null,
  kinds: new Map(), // name -> kind from /api/v1/kinds
  sensors: new Map(), // id -> { sensor, verdict, marker }
  layers: new Map(), // kind -> L.LayerGroup
  unplaced: 0,
  rate: new RateCounter(),
  map: null,
  legend: null,
  open: null, // { id, chart, el } of the open popup
  history: null, // while the hub loads a history: how far (map/status.json)
  older: null, // while older history loads behind the live map (map/status.json)
  // Above CANVAS_FROM sensors markers are drawn on one canvas (a region's 100,000 stay
  // fluid); below, each is a focusable element. The list is the keyboard path either way.
  canvas: false,
  renderer: null,
  hiddenStates: new Set(), // states filtered out in the legend
};
export const CANVAS_FROM = 2000;
// For tests and for operators poking at the console.
window.cityhub = app;

export const $ = (id) => document.getElementById(id);
export const T = () => strings(app.lang);

/** `fresh`: revalidate with the hub rather than take the browser's cached copy
 * (the listing may be cached for 30 s, and after a history loads it is not the same). */
export async function getJson(path, { fresh = false } = {}) {
  const r = await fetch(path, { headers: { Accept: 'application/json' }, cache: fresh ? 'no-cache' : 'default' });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

export function toSensor(f) {
  const p = f.properties || {};
  return {
    id: String(f.id),
    kind: p.kind,
    name: p.name || null,
    coordinates: f.geometry && f.geometry.type === 'Point' ? f.geometry.coordinates : null,
    last_seen: p.last_seen || null,
    latest: p.latest || {},
    register: p.register || null,
  };
}
