// The action panel: alerts and what needs action, reachable by keyboard.
import { actionItems } from './state.js';
import { kindTitle } from './i18n.js';
import { $, T, app } from './app.js';
import { markerClass, openPopupOf, showIfWanted, verdictText } from './markers.js';
import { el } from './popup.js';
import { renderLegend } from './legend.js';

export function focusSensor(id) {
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
  const popup = openPopupOf(entry);
  if (window.matchMedia('(max-width: 900px)').matches) togglePanel(false);
  const closeButton = popup.getElement().querySelector('.leaflet-popup-close-button');
  if (closeButton) closeButton.focus();
}

export function actionButton(e) {
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
export let panelKey = null;

/** The panel redraws in full next time (a view or language change). */
export function forgetPanel() {
  panelKey = null;
}
export function renderPanel() {
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

export function togglePanel(show) {
  const panel = $('panel');
  const open = show === undefined ? !panel.classList.contains('open') : show;
  panel.classList.toggle('open', open);
  $('panel-toggle').setAttribute('aria-expanded', String(open));
  renderPanel();
  if (open) panel.focus();
}
