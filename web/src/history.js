// A history being loaded (the demo): progress in the header.
import L from 'leaflet';
import { $, T, app, getJson } from './app.js';
import { reloadSensors } from './stream.js';

/** Polls `map/status.json` while the hub loads a history; shows how far it got. */
export async function watchHistory() {
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
export function fitFleet(map, placed) {
  const legend = document.querySelector('.legend');
  const below = legend ? legend.offsetHeight + 20 : 30;
  const beside = legend ? legend.offsetWidth + 20 : 30;
  // The legend sits bottom left: keep the fleet above it, or beside it when that leaves more room.
  const size = map.getSize();
  const pad = size.y - below > size.x - beside ? { paddingTopLeft: [30, 30], paddingBottomRight: [30, below] } : { paddingTopLeft: [beside, 30], paddingBottomRight: [30, 30] };
  map.fitBounds(L.latLngBounds(placed), { ...pad, maxZoom: 16 });
}
