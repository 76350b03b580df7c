// The legend and its layer and state toggles.
import L from 'leaflet';
import { kindTitle, number } from './i18n.js';
import { T, app } from './app.js';
import { layerFor, showIfWanted } from './markers.js';
import { el } from './popup.js';

export const Legend = L.Control.extend({
  options: { position: 'bottomleft' },
  onAdd() {
    const div = L.DomUtil.create('section', 'legend');
    L.DomEvent.disableClickPropagation(div);
    L.DomEvent.disableScrollPropagation(div);
    this.div = div;
    return div;
  },
});

export function swatch(kind, cls) {
  return el('span', { class: `sw mk k-${kind} ${cls}`, 'aria-hidden': 'true' }, el('i'));
}

export function legendRows(kind) {
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

export function renderLegend() {
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
