// Italian or English, switched in place.
import { $, T, app } from './app.js';

export function renderChrome() {
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
