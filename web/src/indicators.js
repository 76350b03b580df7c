// The "Indicators" view: one chart per indicator of the mandate (the city's rows,
// by the indicator's own period), with the limit drawn where the law or the plan
// sets one, the method, the plan line and the SDG targets, and the data as JSON
// and CSV.
import uPlot from 'uplot';

const charts = [];
const PERIOD_S = { day: 86400, month: 31 * 86400, year: 366 * 86400 };

function text(lang, ind, key) {
  return (lang === 'it' && ind[`${key}_it`]) || ind[key];
}

function chart(host, rows, ind, T, lang) {
  const t = T();
  const xs = rows.map((r) => Date.parse(r.period_start) / 1000);
  const ys = rows.map((r) => (r.value === null ? null : r.value));
  // A few periods alone get an empty period either side, so they sit in the middle.
  if (xs.length < 3) {
    const p = PERIOD_S[ind.default_period];
    xs.unshift(xs[0] - p);
    ys.unshift(null);
    xs.push(xs[xs.length - 1] + p);
    ys.push(null);
  }
  const series = [{}, { label: t.cityValue, stroke: '#1764ab', width: 2, points: { show: true, size: 6 }, spanGaps: false }];
  const data = [xs, ys];
  const target = ind.target;
  if (target && target.period === ind.default_period) {
    series.push({ label: `${t.limit} ${target.value}`, stroke: '#d7191c', dash: [6, 4], width: 1.5, points: { show: false } });
    data.push(xs.map(() => target.value));
    if (target.value_2030 !== undefined && target.value_2030 !== null) {
      series.push({ label: `${t.limit2030} ${target.value_2030}`, stroke: '#f0a202', dash: [2, 4], width: 1.5, points: { show: false } });
      data.push(xs.map(() => target.value_2030));
    }
  }
  const width = Math.max(280, Math.min(host.clientWidth || 520, 720));
  const u = new uPlot(
    {
      width,
      height: 220,
      series,
      scales: {
        x: { time: true },
        y: { range: (_u, lo, hi) => [Math.min(0, lo), hi > 0 ? hi * 1.1 : 1] },
      },
      axes: [{}, { label: ind.unit, size: 56 }],
      legend: { show: true },
    },
    data,
    host,
  );
  charts.push(u);
}

/** Renders every indicator into `root`. `deps`: `T`, `lang()`, `el`. */
export async function renderIndicators(root, deps) {
  const { T, lang, el } = deps;
  const t = T();
  for (const c of charts.splice(0)) c.destroy();
  const r = await fetch('api/v1/indicators', { headers: { Accept: 'application/json' } });
  if (!r.ok) throw new Error(`indicators: HTTP ${r.status}`);
  const list = (await r.json()).indicators;
  const cards = [];
  const pending = [];
  for (const ind of list) {
    const host = el('div', { class: 'chart', role: 'img', 'aria-label': text(lang(), ind, 'title') });
    const status = el('p', { class: 'empty' }, t.loading);
    const card = el(
      'article',
      { class: 'indicator', id: `indicator-${ind.id}`, 'data-indicator': ind.id },
      el('h2', {}, text(lang(), ind, 'title')),
      el('p', { class: 'meta' }, `${ind.unit} · ${t.periodName[ind.default_period]} · ${text(lang(), ind, 'plan')} · SDG ${ind.sdg.join(', ')}`),
      status,
      host,
      el('details', {}, el('summary', {}, t.method), el('p', {}, text(lang(), ind, 'method'))),
      el(
        'p',
        { class: 'links' },
        el('a', { href: `api/v1/indicators/${ind.id}` }, 'JSON'),
        ' · ',
        el('a', { href: `api/v1/indicators/${ind.id}?format=csv` }, 'CSV'),
      ),
    );
    cards.push(card);
    pending.push(
      (async () => {
        try {
          const d = await (await fetch(`api/v1/indicators/${ind.id}`, { headers: { Accept: 'application/json' } })).json();
          const rows = d.rows.filter((x) => x.sensor === null && x.stream === undefined);
          if (!rows.length) {
            status.textContent = t.noIndicatorData;
            return;
          }
          status.remove();
          chart(host, rows, ind, T, lang());
          card.dataset.rows = String(rows.length);
          card.dataset.points = String(rows.filter((x) => x.value !== null).length);
        } catch (e) {
          console.warn('indicator', ind.id, e);
          status.textContent = t.chartFailed;
        }
      })(),
    );
  }
  root.replaceChildren(el('h2', { class: 'view-title' }, t.indicatorsTitle), el('p', { class: 'intro' }, t.indicatorsIntro), el('div', { class: 'cards' }, ...cards));
  await Promise.all(pending);
  root.dataset.ready = 'true';
}
