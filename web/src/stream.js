// The live stream (/api/v1/stream) and reloads.
import { $, T, app, fromFleet, getJson, listedSensors, mergeSensor } from './app.js';
import { addSensor, rejudge, sensorLabel } from './markers.js';
import { refreshOpenPopup } from './popup.js';
import { renderPanel } from './panel.js';
import { renderLegend } from './legend.js';

export function onReadings(ev) {
  const msg = JSON.parse(ev.data);
  const now = Date.now();
  const entry = app.sensors.get(msg.sensor);
  const times = new Set();
  const points = [];
  if (!entry) return void reloadSensors();
  for (const r of msg.readings) {
    const prev = entry.sensor.latest[r.metric];
    if (!prev || Date.parse(r.time) >= Date.parse(prev.time)) {
      entry.sensor.latest[r.metric] = { value: r.value, unit: r.unit, time: r.time };
    }
    times.add(r.time);
    if (r.metric === entry.verdict.metric) points.push([Date.parse(r.time) / 1000, r.value]);
    if (!entry.sensor.last_seen || Date.parse(r.time) > Date.parse(entry.sensor.last_seen)) entry.sensor.last_seen = r.time;
  }
  app.rate.add(times.size, now);
  rejudge(entry, now);
  if (entry.marker && entry.marker.getElement()) entry.marker.getElement().setAttribute('aria-label', sensorLabel(entry));
  refreshOpenPopup(entry, points);
  schedulePanel();
  $('rate-n').textContent = String(app.rate.rate(now));
}

export let panelTimer = null;
export function schedulePanel() {
  if (panelTimer) return;
  panelTimer = setTimeout(() => {
    panelTimer = null;
    renderPanel();
  }, 1000);
}

export function setLive(on) {
  $('live').classList.toggle('off', !on);
  $('live').textContent = on ? T().live : T().reconnecting;
}

export function connect() {
  const es = new EventSource('api/v1/stream');
  es.addEventListener('open', () => setLive(true));
  es.addEventListener('readings', onReadings);
  es.addEventListener('alert', (ev) => app.alerts.onEvent(ev));
  // The hub dropped events for this slow client, or a reconnect (the browser sends
  // Last-Event-ID by itself) came too late to be resumed: re-read the whole picture.
  es.addEventListener('lagged', () => reloadSensors());
  es.addEventListener('reload', () => reloadSensors());
  es.addEventListener('error', () => setLive(false));
  app.stream = es;
}

export let reloading = null;
export async function reloadSensors() {
  if (reloading) return reloading;
  reloading = (async () => {
    try {
      const sensors = app.fleet ? fromFleet(await getJson('map/fleet.json', { fresh: true })) : await listedSensors();
      const now = Date.now();
      for (const s of sensors) {
        const entry = app.sensors.get(s.id);
        if (entry) {
          // The fleet's arrays carry one value each: fold them in, keep what a popup read.
          if (app.fleet) mergeSensor(entry.sensor, s);
          else entry.sensor = s;
          rejudge(entry, now);
        } else addSensor(s, now);
      }
      renderLegend();
      renderPanel();
      app.alerts.load().catch((e) => console.warn('alerts', e));
    } catch (e) {
      console.warn('reload', e);
    } finally {
      reloading = null;
    }
  })();
  return reloading;
}
