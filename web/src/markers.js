// Markers: one per sensor, coloured by its state, as elements; or a large fleet on one canvas.
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

/**
 * Every sensor of a large fleet on one canvas, without a Leaflet layer each (a
 * region's million would not fit in a tab as layers): positions are projected once
 * per zoom into typed arrays, the circles of one style drawn as one path (alarms
 * last, on top), and a click or hover hit-tests the arrays. Kinds switched off in
 * the legend and states filtered out are skipped at drawing.
 */
/** Drawn unless the legend switched its kind off (`shown`: kind -> its layer is on) or filters its state out. */
function visible(entry, shown) {
  return shown.get(entry.sensor.kind) !== false && !app.hiddenStates.has(entry.verdict.state);
}

export const FleetLayer = L.Canvas.extend({
  initialize(options) {
    L.Canvas.prototype.initialize.call(this, { padding: 0.2, tolerance: 3, ...options });
    this._entries = [];
    this._px = null;
    this._py = null;
    this._projectedAt = null;
  },
  add(entry) {
    entry.style = canvasStyle(entry);
    this._entries.push(entry);
    this._px = null;
    this.redrawSoon();
  },
  redrawSoon() {
    if (this._map && !this._redrawRequest) this._redrawRequest = L.Util.requestAnimFrame(this._redraw, this);
  },
  onAdd(map) {
    L.Canvas.prototype.onAdd.call(this, map);
    map.on('layeradd layerremove', this._onLayers, this);
  },
  onRemove(map) {
    map.off('layeradd layerremove', this._onLayers, this);
    L.Canvas.prototype.onRemove.call(this, map);
  },
  _onLayers(ev) {
    if (ev.layer instanceof L.LayerGroup) this.redrawSoon();
  },
  /** Web Mercator pixels at the map's zoom (EPSG:3857, Leaflet's default CRS). */
  _project() {
    const z = this._map.getZoom();
    const n = this._entries.length;
    if (this._px && this._projectedAt === z) return;
    const scale = this._map.options.crs.scale(z);
    const max = Math.sin((85.0511287798 * Math.PI) / 180);
    const px = new Float64Array(n);
    const py = new Float64Array(n);
    for (let i = 0; i < n; i += 1) {
      const [lon, lat] = this._entries[i].sensor.coordinates;
      const sin = Math.max(Math.min(Math.sin((lat * Math.PI) / 180), max), -max);
      px[i] = scale * (0.5 + lon / 360);
      py[i] = scale * (0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI));
    }
    this._px = px;
    this._py = py;
    this._projectedAt = z;
  },
  _shownKinds() {
    const shown = new Map();
    for (const [k, g] of app.layers) shown.set(k, this._map.hasLayer(g));
    return shown;
  },
  _updatePaths() {
    if (!this._postponeUpdatePaths) this._redraw();
  },
  _draw() {
    if (!this._map || !this._entries.length) return;
    this._project();
    const o = this._map.getPixelOrigin();
    const b = this._bounds;
    const [x0, y0, x1, y1] = [b.min.x + o.x - 8, b.min.y + o.y - 8, b.max.x + o.x + 8, b.max.y + o.y + 8];
    const shown = this._shownKinds();
    const groups = new Map();
    const px = this._px;
    const py = this._py;
    // One marker of a look per pixel: where sensors stand closer than a pixel (a
    // street of bins at city zoom) the others would be painted exactly under it.
    const width = Math.ceil(x1 - x0) + 1;
    for (let i = 0; i < this._entries.length; i += 1) {
      const x = Math.round(px[i]);
      const y = Math.round(py[i]);
      if (x < x0 || x > x1 || y < y0 || y > y1) continue;
      const e = this._entries[i];
      if (!visible(e, shown)) continue;
      let g = groups.get(e.style);
      if (!g) groups.set(e.style, (g = { pts: [], seen: new Set() }));
      const cell = (y - y0) * width + (x - x0);
      if (g.seen.has(cell)) continue;
      g.seen.add(cell);
      g.pts.push(x - o.x, y - o.y);
    }
    const ctx = this._ctx;
    ctx.save();
    ctx.globalAlpha = 1;
    ctx.lineWidth = 1.5;
    // Paths of a few hundred markers: on a bare canvas in headless Chromium one path
    // of 100,000 arcs took 1.6 s to paint, a path per hundred 0.6 s.
    const BATCH = 200;
    for (const [s, { pts }] of [...groups].sort((a, b) => a[0].radius - b[0].radius)) {
      ctx.fillStyle = s.fillColor;
      ctx.setLineDash(s.dashArray ? s.dashArray.split(' ').map(Number) : []);
      ctx.strokeStyle = s.color;
      for (let from = 0; from < pts.length; from += 2 * BATCH) {
        ctx.beginPath();
        for (let i = from; i < Math.min(pts.length, from + 2 * BATCH); i += 2) {
          ctx.moveTo(pts[i] + s.radius, pts[i + 1]);
          ctx.arc(pts[i], pts[i + 1], s.radius, 0, Math.PI * 2);
        }
        ctx.fill();
        ctx.stroke();
      }
    }
    ctx.restore();
  },
  /** The drawn sensor under a layer point, the nearest if several; null if none. */
  hit(point) {
    if (!this._map || !this._entries.length) return null;
    this._project();
    const o = this._map.getPixelOrigin();
    const x = point.x + o.x;
    const y = point.y + o.y;
    const shown = this._shownKinds();
    let best = null;
    let bestD = Infinity;
    for (let i = 0; i < this._entries.length; i += 1) {
      const dx = this._px[i] - x;
      const dy = this._py[i] - y;
      const e = this._entries[i];
      const r = e.style.radius + this.options.tolerance;
      const d = dx * dx + dy * dy;
      if (d > r * r || d >= bestD || !visible(e, shown)) continue;
      best = e;
      bestD = d;
    }
    return best;
  },
  _onClick(e) {
    if (e.type === 'click' && !this._map._draggableMoved(this._map)) {
      const entry = this.hit(this._map.mouseEventToLayerPoint(e));
      if (entry) {
        openPopupOf(entry);
        return;
      }
    }
    this._fireEvent(false, e);
  },
  _handleMouseHover(e, point) {
    if (this._mouseHoverThrottled) return;
    this._mouseHoverThrottled = true;
    setTimeout(() => {
      this._mouseHoverThrottled = false;
    }, 32);
    if (this._container) this._container.classList.toggle('leaflet-interactive', !!this.hit(point));
  },
  _handleMouseOut() {
    if (this._container) this._container.classList.remove('leaflet-interactive');
  },
});

const POPUP = { maxWidth: 340, minWidth: 300, autoPanPadding: [20, 20] };

function popupClosed(entry) {
  if (app.open && app.open.id === entry.sensor.id) {
    if (app.open.chart) app.open.chart.destroy();
    app.open = null;
  }
}

/** Opens the sensor's popup (its marker's, or on the fleet canvas one of its own); returns it. */
export function openPopupOf(entry) {
  if (entry.marker) {
    entry.marker.openPopup();
    return entry.marker.getPopup();
  }
  const [lon, lat] = entry.sensor.coordinates;
  const box = popupContent(entry);
  const popup = L.popup(POPUP).setLatLng([lat, lon]).setContent(box);
  popup.on('remove', () => {
    if (entry.popup === popup) entry.popup = null;
    popupClosed(entry);
  });
  entry.popup = popup;
  popup.openOn(app.map);
  openedPopup(entry, box);
  return popup;
}

/** The sensor's popup while it is open, else null. */
export function popupOf(entry) {
  if (entry.marker) return entry.marker.isPopupOpen() ? entry.marker.getPopup() : null;
  return entry.popup || null;
}

/** Lets Leaflet size and pan the sensor's open popup again after its content grew. */
export function updatePopup(entry) {
  const popup = popupOf(entry);
  if (popup) popup.update();
}

export let palette = null;
const styles = new Map();
/** Fill and outline of a marker on the fleet canvas, from the same CSS variables as
 * the element markers; one shared object per look (a million sensors share a few). */
export function canvasStyle(entry) {
  if (!palette) {
    const css = getComputedStyle(document.documentElement);
    palette = new Map(['--ok', '--warn', '--alarm', '--stale', '--none', '--act0', '--act1', '--act2', '--act3', '--act4'].map((n) => [n, css.getPropertyValue(n).trim()]));
  }
  const v = (name) => palette.get(name);
  const st = entry.verdict.state;
  const look = st === 'activity' ? `${st}${Math.min(entry.verdict.level, 4)}` : st;
  let s = styles.get(look);
  if (!s) {
    const fill = st === 'activity' ? v(`--act${Math.min(entry.verdict.level, 4)}`) : st === 'stale' ? '#fff' : v(`--${st}`);
    s = {
      fillColor: fill || v('--none'),
      color: st === 'stale' ? v('--stale') : st === 'alarm' ? '#7a0000' : '#fff',
      dashArray: st === 'stale' ? '2 2' : null,
      radius: st === 'alarm' ? 7 : 5,
    };
    styles.set(look, s);
  }
  return s;
}

export function restyle(entry) {
  if (app.fleet) {
    entry.style = canvasStyle(entry);
    app.fleet.redrawSoon();
    return;
  }
  if (!entry.marker) return;
  entry.marker.setIcon(icon(entry));
  showIfWanted(entry);
}

/** Puts the marker on its kind's layer unless the legend filters its state out. */
export function showIfWanted(entry) {
  if (app.fleet) {
    app.fleet.redrawSoon();
    return;
  }
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
  if ((entry.marker || entry.style) && before !== markerClass(entry.sensor.kind, entry.verdict)) restyle(entry);
}

export function place(entry) {
  if (app.fleet) {
    app.fleet.add(entry);
    return;
  }
  const [lon, lat] = entry.sensor.coordinates;
  const m = L.marker([lat, lon], { icon: icon(entry), keyboard: true, riseOnHover: true });
  // The content is built on each opening as one element that stays put, so the
  // chart and live updates can find it while it is open.
  m.bindPopup(document.createElement('div'), POPUP);
  m.on('popupopen', (ev) => {
    const box = popupContent(entry);
    ev.popup.setContent(box);
    openedPopup(entry, box);
  });
  m.on('popupclose', () => popupClosed(entry));
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
