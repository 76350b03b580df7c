// A history being loaded (the demo): progress in the header.
import L from 'leaflet';
import { $, T, app, getJson } from './app.js';
import { reloadSensors } from './stream.js';

/** How far a load got, in percent of its span (to `until`, or the present). */
function percent(h) {
  const from = Date.parse(h.from);
  const end = h.until ? Date.parse(h.until) : Date.now();
  return Math.min(100, Math.max(0, Math.round(((Date.parse(h.loaded_until) - from) / Math.max(1, end - from)) * 100)));
}

/**
 * Polls `map/status.json` while the hub loads a history (the map waits for it) or
 * older history behind the live map (the indicators fill in: the view is redrawn
 * every 15 s while it is open, and once more at the end); shows how far each got.
 */
export async function watchHistory(onOlder) {
  let redrawn = Date.now();
  for (;;) {
    let st = { history: null, older: null };
    try {
      st = await getJson('map/status.json');
    } catch (e) {
      console.warn('status', e);
    }
    const h = st.history || null;
    const o = st.older || null;
    const was = app.history;
    const wasOlder = app.older;
    app.history = h;
    app.older = o;
    const el = $('history');
    const rate = (x) => Math.round(x.messages_per_s).toLocaleString(app.lang);
    // Which load the header shows: the map waits for `history`, not for `older`.
    el.dataset.phase = h ? 'history' : o ? 'older' : '';
    if (h) {
      el.textContent = T().history(percent(h), rate(h));
      el.hidden = false;
    } else if (o) {
      el.textContent = T().olderHistory(percent(o), new Date(o.loaded_until).toLocaleDateString(app.lang));
      el.hidden = false;
    } else {
      el.hidden = true;
    }
    // Loaded: the whole picture again, judged as usual.
    if (was && !h) await reloadSensors();
    if (onOlder && ((o && Date.now() - redrawn >= 15_000) || (wasOlder && !o))) {
      redrawn = Date.now();
      await onOlder();
    }
    if (!h && !o) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Fits the map to the fleet, keeping markers clear of the legend in its corner. */
export function fitFleet(map, placed) {
  const legend = document.querySelector('.legend');
  const below = legend ? legend.offsetHeight + 20 : 30;
  const beside = legend ? legend.offsetWidth + 20 : 30;
  // The legend sits bottom left: keep the fleet above it, or beside it when that leaves more room.
  const size = map.getSize();
  const pad = size.y - below > size.x - beside ? { paddingTopLeft: [30, 30], paddingBottomRight: [30, below] } : { paddingTopLeft: [beside, 30], paddingBottomRight: [30, 30] };
  map.fitBounds(L.latLngBounds(placed), { ...pad, maxZoom: 16 });
}
