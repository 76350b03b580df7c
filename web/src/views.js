// The views: the map, the indicators.
import { saveLang } from './i18n.js';
import { renderIndicators } from './indicators.js';
import { $, T, app } from './app.js';
import { icon, openPopupOf } from './markers.js';
import { el } from './popup.js';
import { forgetPanel, renderPanel } from './panel.js';
import { renderLegend } from './legend.js';
import { renderChrome } from './language.js';

/** Shows the view the address names; `quiet`: a redraw of the open indicators view. */
export async function showView({ quiet = false } = {}) {
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
  if (!quiet) delete view.dataset.ready;
  try {
    await renderIndicators(view, { T, lang: () => app.lang, el });
    const one = location.hash.split('/')[1];
    if (one && !quiet) {
      const card = document.getElementById(`indicator-${one}`);
      if (card) card.scrollIntoView();
    }
  } catch (e) {
    console.warn('indicators', e);
    view.replaceChildren(el('p', { class: 'message' }, T().loadFailed));
  }
}

export function setLang(lang) {
  app.lang = lang;
  saveLang(lang);
  renderChrome();
  if (!app.fleet) for (const e of app.sensors.values()) e.marker.setIcon(icon(e));
  renderLegend();
  forgetPanel();
  renderPanel();
  if (app.alerts) app.alerts.render();
  if (location.hash.startsWith('#indicators')) showView();
  if (app.open) {
    const entry = app.sensors.get(app.open.id);
    if (entry) {
      app.map.closePopup();
      openPopupOf(entry);
    }
  }
}
