// The operator map: every sensor of the fleet, coloured by state, updated live
// over /api/v1/stream, with a list of what needs action. Each part is a module
// of its own (app, markers, popup, panel, legend, language, views, stream,
// history); this one starts them.
import L from 'leaflet';
import { metricLabel, kindTitle, duration } from './i18n.js';
import { AlertsPanel } from './alerts.js';
import { $, CANVAS_FROM, T, app, fromFleet, getJson, listedSensors } from './app.js';
import { FleetLayer, addSensor, layerFor, rejudge } from './markers.js';
import { el } from './popup.js';
import { focusSensor, renderPanel, togglePanel } from './panel.js';
import { Legend, renderLegend } from './legend.js';
import { renderChrome } from './language.js';
import { setLang, showView } from './views.js';
import { connect } from './stream.js';
import { fitFleet, watchHistory } from './history.js';

// Marks (performance.mark) at each step of the first load, read by the bench's map rows.
const mark = (step) => performance.mark(`cityhub:${step}`);

async function start() {
  mark('start');
  renderChrome();
  $('lang').addEventListener('click', () => setLang(app.lang === 'it' ? 'en' : 'it'));
  $('panel-toggle').addEventListener('click', () => togglePanel());
  app.alerts = new AlertsPanel({
    el,
    T,
    sensorName: (id) => {
      const e = app.sensors.get(id);
      return (e && e.sensor.name) || id;
    },
    metricLabel: (kind, metric) => metricLabel(app.lang, app.kinds.get(kind), metric),
    kindTitle: (kind) => (app.kinds.get(kind) ? kindTitle(app.lang, app.kinds.get(kind)) : kind),
    focusSensor: (id) => {
      if (location.hash.startsWith('#indicators')) {
        location.hash = '#map';
        showView();
      }
      focusSensor(id);
    },
    duration: (ms) => duration(app.lang, ms),
  });
  app.alerts.bind();
  app.alerts.render();
  window.addEventListener('hashchange', showView);
  showView();
  let settings, kinds, fleet;
  let sensors = null;
  const forced = new URLSearchParams(location.search).get('markers');
  for (;;) {
    try {
      [settings, kinds, fleet] = await Promise.all([getJson('map/settings.json'), getJson('api/v1/kinds'), getJson('map/fleet.json', { fresh: true })]);
      app.canvas = forced ? forced === 'canvas' : fleet.count > CANVAS_FROM;
      // A small fleet is drawn as elements, from the listing (values and register included).
      if (!app.canvas) sensors = await listedSensors();
      break;
    } catch (e) {
      $('message').hidden = false;
      $('message').textContent = T().loadFailed;
      await new Promise((r) => setTimeout(r, 3000));
    }
  }
  mark('data');
  $('message').hidden = true;
  app.settings = settings;
  for (const k of kinds.kinds) app.kinds.set(k.name, k);
  if (app.canvas) sensors = fromFleet(fleet);
  mark('parsed');

  const map = L.map('map', { zoomControl: true, keyboard: true, worldCopyJump: true });
  app.map = map;
  document.body.dataset.markers = app.canvas ? 'canvas' : 'dom';
  if (settings.tile_url) {
    L.tileLayer(settings.tile_url, { maxZoom: 19, attribution: settings.tile_attribution, crossOrigin: true }).addTo(map);
  }
  for (const k of app.kinds.keys()) layerFor(k);
  if (app.canvas) app.fleet = new FleetLayer().addTo(map);
  try {
    const st = await getJson('map/status.json');
    app.history = st.history || null;
    app.older = st.older || null;
  } catch (e) {
    app.history = null;
    app.older = null;
  }
  const now = Date.now();
  for (const s of sensors) addSensor(s, now);
  mark('placed');
  app.legend = new Legend();
  app.legend.addTo(map);
  renderLegend();
  const placed = [...app.sensors.values()].map((e) => [e.sensor.coordinates[1], e.sensor.coordinates[0]]);
  if (placed.length) fitFleet(map, placed);
  else map.setView([45.1335, 10.0226], 13); // Cremona, until the first sensor is placed
  renderPanel();
  mark('listed');
  app.alerts.load().catch((e) => console.warn('alerts', e));
  // Older history loading behind the live map: the indicators view, when open, follows it.
  if (app.history || app.older) watchHistory(() => (location.hash.startsWith('#indicators') ? showView({ quiet: true }) : null));
  connect();
  // Silence is a state too: re-judge as time passes, and keep the counter honest.
  setInterval(() => {
    const t = Date.now();
    for (const e of app.sensors.values()) rejudge(e, t);
    renderPanel();
    $('rate-n').textContent = String(app.rate.rate(t));
  }, 15_000);
  mark('ready');
  document.body.dataset.ready = 'true';
}

start();
