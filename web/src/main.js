// The operator map: every sensor of the fleet, coloured by state, updated live
// over /api/v1/stream, with a list of what needs action.
import L from 'leaflet';
import uPlot from 'uplot';
import { judge, actionItems, RateCounter, sunAltitude } from './state.js';
import { initialLang, saveLang, strings, metricLabel, kindTitle, duration, number } from './i18n.js';
import { AlertsPanel } from './alerts.js';
import { renderIndicators } from './indicators.js';

const DAY_MS = 24 * 3600 * 1000;

const app = {
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
  // Above CANVAS_FROM sensors markers are drawn on one canvas (a region's 100,000 stay
  // fluid); below, each is a focusable element. The list is the keyboard path either way.
  canvas: false,
  renderer: null,
  hiddenStates: new Set(), // states filtered out in the legend
};
const CANVAS_FROM = 2000;
// For tests and for operators poking at the console.
window.cityhub = app;

const $ = (id) => document.getElementById(id);
const T = () => strings(app.lang);

async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: 'application/json' } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function toSensor(f) {
  const p = f.properties || {};
  return {
    id: String(f.id),
    kind: p.kind,
    name: p.name || null,
    coordinates: f.geometry && f.geometry.type === 'Point' ? f.geometry.coordinates : null,
    last_seen: p.last_seen || null,
    latest: p.latest || {},
  };
}

// ---- markers ---------------------------------------------------------------

const StateIcon = L.DivIcon.extend({
  createIcon(old) {
    const el = L.DivIcon.prototype.createIcon.call(this, old);
    el.dataset.sensor = this.options.sensor;
    el.dataset.kind = this.options.kind;
    el.dataset.state = this.options.state;
    el.setAttribute('aria-label', this.options.label);
    el.title = this.options.label;
    return el;
  },
});

function markerClass(kind, v) {
  const level = v.state === 'activity' ? ` l-${Math.min(v.level, 4)}` : '';
  return `mk k-${kind} s-${v.state}${level}`;
}

function verdictText(entry) {
  const t = T();
  const v = entry.verdict;
  const kind = app.kinds.get(entry.sensor.kind);
  const value = v.value === null ? '' : `${number(app.lang, v.value)} ${v.unit || ''}`.trim();
  switch (v.reason) {
    case 'never':
      return t.never;
    case 'silent':
      return t.silent(duration(app.lang, v.silentMs));
    case 'above':
    case 'below':
      if (v.state === 'alarm') {
        return t.above(metricLabel(app.lang, kind, v.metric), value, `${number(app.lang, kind.map.alarm)} ${v.unit || ''}`.trim());
      }
      return `${metricLabel(app.lang, kind, v.metric)} ${value} · ${t.state[v.state]}`;
    case 'lit_by_day':
    case 'dark_at_night':
      return `${t[v.reason]} (${value})`;
    case 'lit':
    case 'dark':
      return `${t[v.reason]} (${value}) · ${t.state.ok}`;
    case 'activity':
      return `${metricLabel(app.lang, kind, v.metric)} ${value}`;
    default:
      return t.noData;
  }
}

function sensorLabel(entry) {
  const kind = app.kinds.get(entry.sensor.kind);
  const name = entry.sensor.name || entry.sensor.id;
  return `${kind ? kindTitle(app.lang, kind) : entry.sensor.kind}: ${name}. ${verdictText(entry)}`;
}

function icon(entry) {
  return new StateIcon({
    className: markerClass(entry.sensor.kind, entry.verdict),
    iconSize: [18, 18],
    html: '<i></i>',
    sensor: entry.sensor.id,
    kind: entry.sensor.kind,
    state: entry.verdict.state,
    label: sensorLabel(entry),
  });
}

/** Fill and outline of a canvas marker, from the same CSS variables as the DOM markers. */
/**
 * Leaflet's canvas renderer fills and strokes every circle on its own: a second per
 * redraw at 100,000 markers. This one draws all circles of one style as one path
 * (the alarms last, on top); hit-testing, popups and events stay Leaflet's.
 */
const BatchedCanvas = L.Canvas.extend({
  _draw() {
    const bounds = this._redrawBounds;
    const ctx = this._ctx;
    ctx.save();
    if (bounds) {
      const size = bounds.getSize();
      ctx.beginPath();
      ctx.rect(bounds.min.x, bounds.min.y, size.x, size.y);
      ctx.clip();
    }
    const groups = new Map();
    for (let order = this._drawFirst; order; order = order.next) {
      const layer = order.layer;
      if (!layer._point || layer._empty() || (bounds && !(layer._pxBounds && layer._pxBounds.intersects(bounds)))) continue;
      const o = layer.options;
      const r = Math.max(Math.round(layer._radius), 1);
      const key = `${o.fillColor}|${o.color}|${o.dashArray}|${r}|${o.weight}`;
      let g = groups.get(key);
      if (!g) groups.set(key, (g = { o, r, pts: [] }));
      g.pts.push(layer._point);
    }
    for (const g of [...groups.values()].sort((a, b) => a.r - b.r)) {
      ctx.beginPath();
      for (const p of g.pts) {
        ctx.moveTo(p.x + g.r, p.y);
        ctx.arc(p.x, p.y, g.r, 0, Math.PI * 2);
      }
      ctx.globalAlpha = g.o.fillOpacity;
      ctx.fillStyle = g.o.fillColor;
      ctx.fill();
      ctx.setLineDash(g.o.dashArray ? String(g.o.dashArray).split(/[ ,]+/).map(Number) : []);
      ctx.globalAlpha = g.o.opacity;
      ctx.lineWidth = g.o.weight;
      ctx.strokeStyle = g.o.color;
      ctx.stroke();
    }
    ctx.restore();
  },
});

let palette = null;
function canvasStyle(entry) {
  if (!palette) {
    const css = getComputedStyle(document.documentElement);
    palette = new Map(['--ok', '--warn', '--alarm', '--stale', '--none', '--act0', '--act1', '--act2', '--act3', '--act4'].map((n) => [n, css.getPropertyValue(n).trim()]));
  }
  const v = (name) => palette.get(name);
  const st = entry.verdict.state;
  const fill = st === 'activity' ? v(`--act${Math.min(entry.verdict.level, 4)}`) : st === 'stale' ? '#fff' : v(`--${st}`);
  return {
    fillColor: fill || v('--none'),
    color: st === 'stale' ? v('--stale') : st === 'alarm' ? '#7a0000' : '#fff',
    dashArray: st === 'stale' ? '2 2' : null,
    radius: st === 'alarm' ? 7 : 5,
  };
}

function restyle(entry) {
  if (!entry.marker) return;
  if (app.canvas) {
    const s = canvasStyle(entry);
    entry.marker.setStyle(s);
    entry.marker.setRadius(s.radius);
  } else entry.marker.setIcon(icon(entry));
  showIfWanted(entry);
}

/** Puts the marker on its kind's layer unless the legend filters its state out. */
function showIfWanted(entry) {
  const g = layerFor(entry.sensor.kind);
  const want = !app.hiddenStates.has(entry.verdict.state);
  if (want && !g.hasLayer(entry.marker)) g.addLayer(entry.marker);
  else if (!want && g.hasLayer(entry.marker)) g.removeLayer(entry.marker);
}

function rejudge(entry, now) {
  const kind = app.kinds.get(entry.sensor.kind);
  const before = entry.verdict && markerClass(entry.sensor.kind, entry.verdict);
  entry.verdict = judge(entry.sensor, kind, now, sunAltitude, app.settings.stale_after_cadences);
  // While the hub loads a history, old readings are not silence: no data yet.
  if (app.history && entry.verdict.state === 'stale') entry.verdict = { ...entry.verdict, state: 'none' };
  if (entry.marker && before !== markerClass(entry.sensor.kind, entry.verdict)) restyle(entry);
}

function place(entry) {
  const [lon, lat] = entry.sensor.coordinates;
  const m = app.canvas
    ? L.circleMarker([lat, lon], { renderer: app.renderer, weight: 1.5, fillOpacity: 1, bubblingMouseEvents: false, ...canvasStyle(entry) })
    : L.marker([lat, lon], { icon: icon(entry), keyboard: true, riseOnHover: true });
  // The content is built on each opening as one element that stays put, so the
  // chart and live updates can find it while it is open.
  m.bindPopup(document.createElement('div'), { maxWidth: 340, minWidth: 300, autoPanPadding: [20, 20] });
  m.on('popupopen', (ev) => {
    const box = popupContent(entry);
    ev.popup.setContent(box);
    openedPopup(entry, box);
  });
  m.on('popupclose', () => {
    if (app.open && app.open.id === entry.sensor.id) {
      if (app.open.chart) app.open.chart.destroy();
      app.open = null;
    }
  });
  entry.marker = m;
  showIfWanted(entry);
}

function layerFor(kind) {
  let g = app.layers.get(kind);
  if (!g) {
    g = L.layerGroup().addTo(app.map);
    app.layers.set(kind, g);
  }
  return g;
}

function addSensor(s, now) {
  if (!s.coordinates) {
    app.unplaced += 1;
    return null;
  }
  const entry = { sensor: s, verdict: null, marker: null };
  rejudge(entry, now);
  app.sensors.set(s.id, entry);
  place(entry);
  return entry;
}

// ---- popup -----------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function valuesTable(entry, now) {
  const kind = app.kinds.get(entry.sensor.kind);
  const metrics = kind ? kind.metrics.map((m) => m.name) : Object.keys(entry.sensor.latest);
  const rows = metrics
    .filter((m) => entry.sensor.latest[m])
    .map((m) => {
      const r = entry.sensor.latest[m];
      return el(
        'tr',
        { 'data-metric': m },
        el('th', { scope: 'row' }, metricLabel(app.lang, kind, m)),
        el('td', { class: 'v' }, `${number(app.lang, r.value)} ${r.unit}`.trim()),
        el('td', { class: 'age' }, duration(app.lang, now - Date.parse(r.time))),
      );
    });
  if (!rows.length) return el('p', { class: 'age' }, T().noData);
  return el('table', {}, el('tbody', {}, ...rows));
}

function popupContent(entry) {
  const now = Date.now();
  const kind = app.kinds.get(entry.sensor.kind);
  const t = T();
  const box = el(
    'div',
    { class: 'popup', 'data-sensor': entry.sensor.id },
    el('h3', {}, entry.sensor.name || entry.sensor.id),
    el('p', { class: 'id' }, `${kind ? kindTitle(app.lang, kind) : entry.sensor.kind} · ${entry.sensor.id}`),
    el('p', { class: `verdict v-${entry.verdict.state}` }, verdictText(entry)),
    el('div', { class: 'values' }, valuesTable(entry, now)),
  );
  const metric = entry.verdict.metric;
  if (metric) {
    box.append(
      el('p', { class: 'chart-title' }, `${t.last24h}: ${metricLabel(app.lang, kind, metric)}`),
      el('div', { class: 'chart', 'data-state': 'loading' }, t.loading),
    );
  }
  return box;
}

async function openedPopup(entry, box) {
  app.open = { id: entry.sensor.id, chart: null, box };
  const metric = entry.verdict.metric;
  if (!metric) return;
  const target = box.querySelector('.chart');
  const to = new Date();
  const from = new Date(to.getTime() - DAY_MS);
  const q = new URLSearchParams({ metric, from: from.toISOString(), to: to.toISOString(), limit: String(app.settings.max_page) });
  try {
    let page = await getJson(`api/v1/sensors/${encodeURIComponent(entry.sensor.id)}/readings?${q}`);
    if (page.links && page.links.some((l) => l.rel === 'next')) {
      // More than a page of raw readings in a day: a quarter-hour mean is plenty for a popup.
      q.set('bucket', '15m');
      page = await getJson(`api/v1/sensors/${encodeURIComponent(entry.sensor.id)}/readings?${q}`);
    }
    if (!app.open || app.open.box !== box) return;
    const xs = page.readings.map((r) => Date.parse(r.time) / 1000);
    const ys = page.readings.map((r) => r.value);
    target.textContent = '';
    target.dataset.points = String(xs.length);
    if (!xs.length) {
      target.dataset.state = 'empty';
      target.textContent = T().noReadings;
      return;
    }
    const unit = page.units[metric] || '';
    const hhmm = new Intl.DateTimeFormat(app.lang, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    app.open.chart = new uPlot(
      {
        width: 290,
        height: 150,
        legend: { show: false },
        scales: { x: { time: true, range: [from.getTime() / 1000, to.getTime() / 1000] } },
        axes: [{ size: 30, values: (u, ticks) => ticks.map((x) => hhmm.format(x * 1000)) }, { size: 46, values: (u, ticks) => ticks.map((v) => `${number(app.lang, v)}`) , label: unit, labelSize: 14 }],
        series: [{}, { stroke: '#1764ab', width: 2, fill: 'rgba(23,100,171,.12)', points: { show: xs.length < 60 } }],
      },
      [xs, ys],
      target,
    );
    app.open.data = [xs, ys];
    target.dataset.state = 'drawn';
    target.setAttribute('role', 'img');
    target.setAttribute('aria-label', `${T().last24h}: ${xs.length} ${metric}`);
    entry.marker.getPopup().update();
  } catch (e) {
    console.warn('chart', e);
    target.dataset.state = 'failed';
    target.textContent = T().chartFailed;
  }
}

function refreshOpenPopup(entry, newPoints) {
  const open = app.open;
  if (!open || open.id !== entry.sensor.id) return;
  const now = Date.now();
  open.box.querySelector('.verdict').className = `verdict v-${entry.verdict.state}`;
  open.box.querySelector('.verdict').textContent = verdictText(entry);
  open.box.querySelector('.values').replaceChildren(valuesTable(entry, now));
  if (open.chart && open.data && newPoints.length) {
    const [xs, ys] = open.data;
    for (const [t, v] of newPoints) {
      if (!xs.length || t > xs[xs.length - 1]) {
        xs.push(t);
        ys.push(v);
      }
    }
    open.chart.setData([xs, ys], false);
    open.chart.setScale('x', { min: now / 1000 - DAY_MS / 1000, max: now / 1000 });
    open.box.querySelector('.chart').dataset.points = String(xs.length);
  }
}

// ---- action panel ----------------------------------------------------------

function focusSensor(id) {
  const entry = app.sensors.get(id);
  if (!entry) return;
  const group = app.layers.get(entry.sensor.kind);
  if (group && !app.map.hasLayer(group)) {
    group.addTo(app.map);
    renderLegend();
  }
  if (app.hiddenStates.has(entry.verdict.state)) {
    app.hiddenStates.delete(entry.verdict.state);
    for (const e of app.sensors.values()) if (e.verdict.state === entry.verdict.state) showIfWanted(e);
    renderLegend();
  }
  const [lon, lat] = entry.sensor.coordinates;
  app.map.setView([lat, lon], Math.max(app.map.getZoom(), 17), { animate: false });
  entry.marker.openPopup();
  if (window.matchMedia('(max-width: 900px)').matches) togglePanel(false);
  const closeButton = entry.marker.getPopup().getElement().querySelector('.leaflet-popup-close-button');
  if (closeButton) closeButton.focus();
}

function actionButton(e) {
  const kind = app.kinds.get(e.sensor.kind);
  const b = el(
    'button',
    { type: 'button', 'data-sensor': e.sensor.id, 'data-state': e.verdict.state },
    el('span', { class: `sw ${markerClass(e.sensor.kind, e.verdict)}`, 'aria-hidden': 'true' }, el('i')),
    el('span', { class: 'what' }, `${e.sensor.name || e.sensor.id}`),
    el('span', { class: 'why' }, ''),
  );
  b.addEventListener('click', () => focusSensor(e.sensor.id));
  return el('li', {}, b);
}

/**
 * The list is rebuilt only when what is on it, or its order, changes; otherwise
 * only its texts (silent for how long, current values) are refreshed, so it does
 * not jump under the operator's finger.
 */
let panelKey = null;
function renderPanel() {
  const t = T();
  const items = actionItems([...app.sensors.values()]);
  const list = $('actions');
  const key = items.map((e) => `${e.sensor.id}:${e.verdict.state}:${e.verdict.reason}`).join('|');
  if (key !== panelKey) {
    panelKey = key;
    const focused = document.activeElement && document.activeElement.closest('#actions') ? document.activeElement.dataset.sensor : null;
    list.replaceChildren(...items.map(actionButton));
    if (focused) {
      const again = list.querySelector(`button[data-sensor="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }
  items.forEach((e, i) => {
    const kind = app.kinds.get(e.sensor.kind);
    const why = list.children[i].querySelector('.why');
    const text = `${kind ? kindTitle(app.lang, kind) : e.sensor.kind} · ${verdictText(e)}`;
    if (why.textContent !== text) why.textContent = text;
  });
  $('panel-empty').hidden = items.length > 0;
  $('panel-empty').textContent = t.nothing;
  $('panel-title').textContent = `${t.needsAction} (${items.length})`;
  const open = $('panel').classList.contains('open');
  $('panel-toggle').textContent = open ? t.hidePanel : `${t.showPanel} (${items.length})`;
}

function togglePanel(show) {
  const panel = $('panel');
  const open = show === undefined ? !panel.classList.contains('open') : show;
  panel.classList.toggle('open', open);
  $('panel-toggle').setAttribute('aria-expanded', String(open));
  renderPanel();
  if (open) panel.focus();
}

// ---- legend and layer toggles ---------------------------------------------

const Legend = L.Control.extend({
  options: { position: 'bottomleft' },
  onAdd() {
    const div = L.DomUtil.create('section', 'legend');
    L.DomEvent.disableClickPropagation(div);
    L.DomEvent.disableScrollPropagation(div);
    this.div = div;
    return div;
  },
});

function swatch(kind, cls) {
  return el('span', { class: `sw mk k-${kind} ${cls}`, 'aria-hidden': 'true' }, el('i'));
}

function legendRows(kind) {
  const t = T();
  const r = kind.map;
  const n = (v) => number(app.lang, v);
  const unit = r ? (kind.metrics.find((m) => m.name === r.metric) || {}).unit || '' : '';
  const rows = [];
  if (r && r.rule === 'above') {
    rows.push([swatch(kind.name, 's-ok'), t.belowWarn(n(r.warn), unit)]);
    rows.push([swatch(kind.name, 's-warn'), t.between(n(r.warn), n(r.alarm), unit)]);
    rows.push([swatch(kind.name, 's-alarm'), t.atLeast(n(r.alarm), unit)]);
  } else if (r && r.rule === 'lamp') {
    rows.push([swatch(kind.name, 's-ok'), t.lampOk]);
    rows.push([swatch(kind.name, 's-alarm'), t.lampFault]);
  } else if (r && r.rule === 'activity') {
    const steps = r.steps;
    for (let i = 0; i <= Math.min(steps.length, 4); i += 1) {
      const lo = i === 0 ? null : n(steps[i - 1]);
      const hi = i < steps.length ? n(steps[i]) : null;
      rows.push([swatch(kind.name, `s-activity l-${i}`), t.level(lo, hi, unit)]);
    }
  } else {
    rows.push([swatch(kind.name, 's-none'), t.noData]);
  }
  rows.push([swatch(kind.name, 's-stale'), t.stale]);
  return rows;
}

function renderLegend() {
  const t = T();
  const div = app.legend.div;
  // A disclosure, open on a desktop and folded on a tablet, so it never hides the map.
  const wasOpen = div.querySelector('details') ? div.querySelector('details').open : !window.matchMedia('(max-width: 900px)').matches;
  const body = [el('summary', {}, t.layers)];
  for (const kind of app.kinds.values()) {
    const group = layerFor(kind.name);
    const count = [...app.sensors.values()].filter((e) => e.sensor.kind === kind.name).length;
    const box = el('input', { type: 'checkbox', 'data-kind': kind.name });
    box.checked = app.map.hasLayer(group);
    box.addEventListener('change', () => {
      if (box.checked) group.addTo(app.map);
      else app.map.removeLayer(group);
    });
    const items = legendRows(kind).map(([sw, label]) => el('li', {}, sw, label));
    body.push(
      el('fieldset', {}, el('legend', {}, el('label', {}, box, `${kindTitle(app.lang, kind)} (${count})`)), el('ul', {}, ...items)),
    );
  }
  const counts = new Map();
  for (const e of app.sensors.values()) counts.set(e.verdict.state, (counts.get(e.verdict.state) || 0) + 1);
  const states = ['alarm', 'warn', 'ok', 'activity', 'stale', 'none'].filter((st) => counts.has(st) || app.hiddenStates.has(st));
  const stateBoxes = states.map((st) => {
    const box = el('input', { type: 'checkbox', 'data-state': st });
    box.checked = !app.hiddenStates.has(st);
    box.addEventListener('change', () => {
      if (box.checked) app.hiddenStates.delete(st);
      else app.hiddenStates.add(st);
      for (const e of app.sensors.values()) if (e.verdict.state === st) showIfWanted(e);
    });
    return el('li', {}, el('label', {}, box, `${t.state[st]} (${counts.get(st) || 0})`));
  });
  body.push(el('fieldset', { class: 'states' }, el('legend', {}, t.showStates), el('ul', {}, ...stateBoxes)));
  if (app.unplaced) body.push(el('p', { class: 'note' }, t.unplaced(app.unplaced)));
  const details = el('details', {}, ...body);
  details.open = wasOpen;
  div.replaceChildren(details);
}

// ---- language --------------------------------------------------------------

function renderChrome() {
  const t = T();
  document.documentElement.lang = app.lang;
  $('title').textContent = t.title;
  $('rate-label').textContent = t.perMin;
  $('lang').textContent = t.switchTo;
  $('lang').setAttribute('aria-label', t.switchLabel);
  $('lang').setAttribute('lang', app.lang === 'it' ? 'en' : 'it');
  $('map').setAttribute('aria-label', t.title);
  document.querySelector('.skip').textContent = app.lang === 'it' ? 'Vai all’elenco da gestire' : 'Skip to the list of what needs action';
  $('live').textContent = $('live').classList.contains('off') ? t.reconnecting : t.live;
  $('nav-map').textContent = t.navMap;
  $('nav-indicators').textContent = t.navIndicators;
}

// ---- views: the map, the indicators ------------------------------------------

async function showView() {
  const indicators = location.hash.startsWith('#indicators');
  $('nav-map').removeAttribute('aria-current');
  $('nav-indicators').removeAttribute('aria-current');
  $(indicators ? 'nav-indicators' : 'nav-map').setAttribute('aria-current', 'page');
  document.querySelector('.layout').hidden = indicators;
  const view = $('indicators-view');
  view.hidden = !indicators;
  if (!indicators) {
    if (app.map) app.map.invalidateSize();
    return;
  }
  delete view.dataset.ready;
  try {
    await renderIndicators(view, { T, lang: () => app.lang, el });
    const one = location.hash.split('/')[1];
    if (one) {
      const card = document.getElementById(`indicator-${one}`);
      if (card) card.scrollIntoView();
    }
  } catch (e) {
    console.warn('indicators', e);
    view.replaceChildren(el('p', { class: 'message' }, T().loadFailed));
  }
}

function setLang(lang) {
  app.lang = lang;
  saveLang(lang);
  renderChrome();
  if (!app.canvas) for (const e of app.sensors.values()) e.marker.setIcon(icon(e));
  renderLegend();
  panelKey = null;
  renderPanel();
  if (app.alerts) app.alerts.render();
  if (location.hash.startsWith('#indicators')) showView();
  if (app.open) {
    const entry = app.sensors.get(app.open.id);
    if (entry) {
      entry.marker.closePopup();
      entry.marker.openPopup();
    }
  }
}

// ---- live stream -----------------------------------------------------------

function onReadings(ev) {
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
  if (entry.marker.getElement()) entry.marker.getElement().setAttribute('aria-label', sensorLabel(entry));
  refreshOpenPopup(entry, points);
  schedulePanel();
  $('rate-n').textContent = String(app.rate.rate(now));
}

let panelTimer = null;
function schedulePanel() {
  if (panelTimer) return;
  panelTimer = setTimeout(() => {
    panelTimer = null;
    renderPanel();
  }, 1000);
}

function setLive(on) {
  $('live').classList.toggle('off', !on);
  $('live').textContent = on ? T().live : T().reconnecting;
}

function connect() {
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

let reloading = null;
async function reloadSensors() {
  if (reloading) return reloading;
  reloading = (async () => {
    try {
      const fc = await getJson('api/v1/sensors');
      const now = Date.now();
      for (const f of fc.features) {
        const s = toSensor(f);
        const entry = app.sensors.get(s.id);
        if (entry) {
          entry.sensor = s;
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

// ---- a history being loaded (the demo) ----------------------------------------

/** Polls `map/status.json` while the hub loads a history; shows how far it got. */
async function watchHistory() {
  for (;;) {
    let h = null;
    try {
      h = (await getJson('map/status.json')).history;
    } catch (e) {
      console.warn('status', e);
    }
    const was = app.history;
    app.history = h;
    const el = $('history');
    if (h) {
      const from = Date.parse(h.from);
      const pct = Math.min(100, Math.max(0, Math.round(((Date.parse(h.loaded_until) - from) / (Date.now() - from)) * 100)));
      el.textContent = T().history(pct, Math.round(h.messages_per_s).toLocaleString(app.lang));
      el.hidden = false;
    } else {
      el.hidden = true;
      // Loaded: the whole picture again, judged as usual.
      if (was) await reloadSensors();
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Fits the map to the fleet, keeping markers clear of the legend in its corner. */
function fitFleet(map, placed) {
  const legend = document.querySelector('.legend');
  const below = legend ? legend.offsetHeight + 20 : 30;
  const beside = legend ? legend.offsetWidth + 20 : 30;
  // The legend sits bottom left: keep the fleet above it, or beside it when that leaves more room.
  const size = map.getSize();
  const pad = size.y - below > size.x - beside ? { paddingTopLeft: [30, 30], paddingBottomRight: [30, below] } : { paddingTopLeft: [beside, 30], paddingBottomRight: [30, 30] };
  map.fitBounds(L.latLngBounds(placed), { ...pad, maxZoom: 16 });
}

// ---- start -----------------------------------------------------------------

async function start() {
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
  let settings, kinds, fc;
  for (;;) {
    try {
      [settings, kinds, fc] = await Promise.all([getJson('map/settings.json'), getJson('api/v1/kinds'), getJson('api/v1/sensors')]);
      break;
    } catch (e) {
      $('message').hidden = false;
      $('message').textContent = T().loadFailed;
      await new Promise((r) => setTimeout(r, 3000));
    }
  }
  $('message').hidden = true;
  app.settings = settings;
  for (const k of kinds.kinds) app.kinds.set(k.name, k);

  const forced = new URLSearchParams(location.search).get('markers');
  app.canvas = forced ? forced === 'canvas' : fc.features.length > CANVAS_FROM;
  const map = L.map('map', { zoomControl: true, keyboard: true, worldCopyJump: true, preferCanvas: app.canvas });
  app.map = map;
  if (app.canvas) app.renderer = new BatchedCanvas({ padding: 0.2, tolerance: 3 });
  document.body.dataset.markers = app.canvas ? 'canvas' : 'dom';
  if (settings.tile_url) {
    L.tileLayer(settings.tile_url, { maxZoom: 19, attribution: settings.tile_attribution, crossOrigin: true }).addTo(map);
  }
  for (const k of app.kinds.keys()) layerFor(k);
  try {
    app.history = (await getJson('map/status.json')).history;
  } catch (e) {
    app.history = null;
  }
  const now = Date.now();
  for (const f of fc.features) addSensor(toSensor(f), now);
  app.legend = new Legend();
  app.legend.addTo(map);
  renderLegend();
  const placed = [...app.sensors.values()].map((e) => [e.sensor.coordinates[1], e.sensor.coordinates[0]]);
  if (placed.length) fitFleet(map, placed);
  else map.setView([45.1335, 10.0226], 13); // Cremona, until the first sensor is placed
  renderPanel();
  app.alerts.load().catch((e) => console.warn('alerts', e));
  if (app.history) watchHistory();
  connect();
  // Silence is a state too: re-judge as time passes, and keep the counter honest.
  setInterval(() => {
    const t = Date.now();
    for (const e of app.sensors.values()) rejudge(e, t);
    renderPanel();
    $('rate-n').textContent = String(app.rate.rate(t));
  }, 15_000);
  document.body.dataset.ready = 'true';
}

start();
