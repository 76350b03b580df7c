// Markers: one per sensor, coloured by its state, as elements or on one canvas.
import L from 'leaflet';
import { judge, sunAltitude } from './state.js';
import { metricLabel, kindTitle, duration, number } from './i18n.js';
import { T, app } from './app.js';
import { openedPopup, popupContent } from './popup.js';

export const StateIcon = L.DivIcon.extend({
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

export function markerClass(kind, v) {
  const level = v.state === 'activity' ? ` l-${Math.min(v.level, 4)}` : '';
  return `mk k-${kind} s-${v.state}${level}`;
}

export function verdictText(entry) {
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

export function sensorLabel(entry) {
  const kind = app.kinds.get(entry.sensor.kind);
  const name = entry.sensor.name || entry.sensor.id;
  return `${kind ? kindTitle(app.lang, kind) : entry.sensor.kind}: ${name}. ${verdictText(entry)}`;
}

export function icon(entry) {
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
export const BatchedCanvas = L.Canvas.extend({
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

export let palette = null;
export function canvasStyle(entry) {
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

export function restyle(entry) {
  if (!entry.marker) return;
  if (app.canvas) {
    const s = canvasStyle(entry);
    entry.marker.setStyle(s);
    entry.marker.setRadius(s.radius);
  } else entry.marker.setIcon(icon(entry));
  showIfWanted(entry);
}

/** Puts the marker on its kind's layer unless the legend filters its state out. */
export function showIfWanted(entry) {
  const g = layerFor(entry.sensor.kind);
  const want = !app.hiddenStates.has(entry.verdict.state);
  if (want && !g.hasLayer(entry.marker)) g.addLayer(entry.marker);
  else if (!want && g.hasLayer(entry.marker)) g.removeLayer(entry.marker);
}

export function rejudge(entry, now) {
  const kind = app.kinds.get(entry.sensor.kind);
  const before = entry.verdict && markerClass(entry.sensor.kind, entry.verdict);
  entry.verdict = judge(entry.sensor, kind, now, sunAltitude, app.settings.stale_after_cadences);
  // While the hub loads a history, old readings are not silence: no data yet.
  if (app.history && entry.verdict.state === 'stale') entry.verdict = { ...entry.verdict, state: 'none' };
  if (entry.marker && before !== markerClass(entry.sensor.kind, entry.verdict)) restyle(entry);
}

export function place(entry) {
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

export function layerFor(kind) {
  let g = app.layers.get(kind);
  if (!g) {
    g = L.layerGroup().addTo(app.map);
    app.layers.set(kind, g);
  }
  return g;
}

export function addSensor(s, now) {
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
