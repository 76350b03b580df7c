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
  // Above CANVAS_FROM sensors the fleet is read from map/fleet.json and drawn on one
  // canvas (`fleet`, a FleetLayer: a region's 100,000 stay fluid); below, each sensor is a
  // focusable element. The list is the keyboard path either way.
  canvas: false,
  fleet: null,
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

/** Every sensor from the listing, with all its values and its register entry. */
export async function listedSensors() {
  return (await getJson('api/v1/sensors', { fresh: true })).features.map(toSensor);
}

/**
 * Sensors from `map/fleet.json` (one array per field, a tenth of the listing's bytes):
 * each with its kind's judged metric only, `partial` until its popup reads the rest
 * from /api/v1/sensors/{id}.
 */
export function fromFleet(doc) {
  const units = new Map();
  for (const [kind, metric] of Object.entries(doc.judged_by)) {
    const k = app.kinds.get(kind);
    const m = k && k.metrics.find((x) => x.name === metric);
    units.set(kind, (m && m.unit) || '');
  }
  const iso = (ms) => (ms === null ? null : new Date(ms).toISOString());
  const out = new Array(doc.count);
  for (let i = 0; i < doc.count; i += 1) {
    const kind = doc.kinds[doc.kind[i]];
    const metric = doc.judged_by[kind];
    const latest = {};
    if (metric && doc.value[i] !== null) latest[metric] = { value: doc.value[i], unit: units.get(kind), time: iso(doc.at[i]) };
    out[i] = {
      id: doc.id[i],
      kind,
      name: doc.name[i],
      coordinates: doc.lon[i] === null || doc.lat[i] === null ? null : [doc.lon[i], doc.lat[i]],
      last_seen: iso(doc.seen[i]),
      latest,
      register: null,
      partial: true,
    };
  }
  return out;
}

/** Folds what `from` knows of a sensor into `into`: its newer values, its register. */
export function mergeSensor(into, from) {
  for (const [metric, r] of Object.entries(from.latest)) {
    const had = into.latest[metric];
    if (!had || Date.parse(r.time) >= Date.parse(had.time)) into.latest[metric] = r;
  }
  if (from.last_seen && (!into.last_seen || Date.parse(from.last_seen) > Date.parse(into.last_seen))) into.last_seen = from.last_seen;
  into.name = from.name;
  if (from.register) into.register = from.register;
  if (!from.partial) into.partial = false;
}
