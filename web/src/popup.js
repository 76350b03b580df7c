// The popup of a sensor: its values and a 24-hour chart.
import uPlot from 'uplot';
import { metricLabel, kindTitle, duration, number } from './i18n.js';
import { DAY_MS, T, app, getJson, mergeSensor, toSensor } from './app.js';
import { rejudge, updatePopup, verdictText } from './markers.js';

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

export function valuesTable(entry, now) {
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

/** "What is this sensor?": its entry in the public register, in the page's language. */
export function registerSection(entry) {
  const r = entry.sensor.register;
  if (!r) return null;
  const t = T();
  const purpose = app.lang === 'en' ? r.purpose_en || r.purpose : r.purpose || r.purpose_en;
  const rows = [
    [t.purpose, purpose],
    [t.responsible, r.responsible],
    [t.contact, r.contact],
    [t.personalData, r.personal_data ? t.capturesPersonal(r.legal_basis || '?') : t.noPersonal],
  ].filter(([, v]) => v);
  const section = el(
    'details',
    { class: 'register' },
    el('summary', {}, t.whatIs),
    el('dl', {}, ...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
  );
  // Opening it makes the popup taller: let Leaflet size and pan it again.
  section.addEventListener('toggle', () => updatePopup(entry));
  return section;
}

export function popupContent(entry) {
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
  const reg = registerSection(entry);
  if (reg) box.append(reg);
  const metric = entry.verdict.metric;
  if (metric) {
    box.append(
      el('p', { class: 'chart-title' }, `${t.last24h}: ${metricLabel(app.lang, kind, metric)}`),
      el('div', { class: 'chart', 'data-state': 'loading' }, t.loading),
    );
  }
  return box;
}

export async function openedPopup(entry, box) {
  app.open = { id: entry.sensor.id, chart: null, box };
  if (entry.sensor.partial) completeSensor(entry, box);
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
    updatePopup(entry);
  } catch (e) {
    console.warn('chart', e);
    target.dataset.state = 'failed';
    target.textContent = T().chartFailed;
  }
}

export function refreshOpenPopup(entry, newPoints) {
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

/** A sensor drawn from the fleet's arrays knows one value: its popup reads the rest
 * (every metric, the register entry) from /api/v1/sensors/{id}. */
async function completeSensor(entry, box) {
  try {
    const full = toSensor(await getJson(`api/v1/sensors/${encodeURIComponent(entry.sensor.id)}`));
    mergeSensor(entry.sensor, full);
    rejudge(entry, Date.now());
    if (!app.open || app.open.box !== box) return;
    refreshOpenPopup(entry, []);
    const reg = registerSection(entry);
    if (reg && !box.querySelector('.register')) box.querySelector('.values').after(reg);
    updatePopup(entry);
  } catch (e) {
    console.warn('sensor', e);
  }
}
