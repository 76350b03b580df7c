// Italian and English labels. The browser's language picks one; the header button
// switches, and the choice is remembered on this device.

const STRINGS = {
  en: {
    title: 'Operator map',
    needsAction: 'Needs action',
    nothing: 'Nothing needs action.',
    perMin: 'readings/min',
    live: 'live',
    reconnecting: 'reconnecting…',
    switchTo: 'Italiano',
    switchLabel: 'Passa all’italiano',
    layers: 'Layers and legend',
    showStates: 'Show states',
    stale: 'silent for 3 cadences',
    noData: 'no data yet',
    belowWarn: (w, u) => `below ${w} ${u}`,
    between: (w, a, u) => `${w}–${a} ${u}`,
    atLeast: (a, u) => `${a} ${u} or more`,
    lampOk: 'working',
    lampFault: 'lit by day or dark at night',
    level: (lo, hi, u) => (hi === null ? `${lo} ${u} or more` : lo === null ? `below ${hi} ${u}` : `${lo}–${hi} ${u}`),
    lit_by_day: 'Lit by day',
    dark_at_night: 'Dark at night',
    lit: 'lit',
    dark: 'dark',
    never: 'Never reported',
    silent: (d) => `Silent for ${d}`,
    above: (m, v, a) => `${m} ${v}, limit ${a}`,
    last24h: 'Last 24 hours',
    noReadings: 'No readings in the last 24 hours.',
    loading: 'Loading…',
    chartFailed: 'The chart could not be loaded.',
    unplaced: (n) => `${n} sensors without a position are not on the map.`,
    showPanel: 'Needs action',
    hidePanel: 'Hide list',
    state: { ok: 'normal', warn: 'attention', alarm: 'needs action', stale: 'silent', none: 'no data', activity: 'activity' },
    loadFailed: 'The hub did not answer; retrying.',
    history: (pct, rate) => `Loading history: ${pct} % (${rate} messages/s)`,
    olderHistory: (pct, day) => `Loading older history: ${pct} % (up to ${day})`,
    navMap: 'Map',
    navIndicators: 'Indicators',
    alerts: 'Alerts',
    noAlerts: 'No open alerts.',
    rule: (r, th) => `${r.replace(/_/g, ' ')} (threshold ${th})`,
    silenceRule: (d) => `no reading for ${d}`,
    severity: { info: 'Info', warning: 'Warning', critical: 'Critical' },
    openSince: (d) => `Open for ${d}`,
    acknowledged: 'Acknowledged',
    showOnMap: 'Show on map',
    acknowledge: 'Acknowledge',
    ackNote: 'Note (what was done)',
    confirmAck: 'Confirm',
    tokenRefused: 'The operator token was refused.',
    alreadyHandled: 'Someone already acknowledged it, or it cleared.',
    ackFailed: 'The hub could not acknowledge it; try again.',
    operator: 'Operator',
    operatorOn: 'Operator (token saved on this device)',
    signedIn: (name, role) => `Signed in as ${name} (${role})`,
    roles: { viewer: 'viewer', operator: 'operator', admin: 'admin' },
    whatIs: 'What is this sensor?',
    purpose: 'Purpose',
    responsible: 'Responsible',
    contact: 'Contact',
    personalData: 'Personal data',
    capturesPersonal: (basis) => `may capture some; legal basis: ${basis}`,
    noPersonal: 'none captured',
    operatorToken: 'Operator token',
    save: 'Save',
    forget: 'Forget the token',
    indicatorsTitle: 'Indicators of the mandate',
    indicatorsIntro: 'Computed by the hub from the stored readings, for the whole city. The red line is the limit the law sets, the amber one its value from 2030.',
    periodName: { day: 'by day', month: 'by month', year: 'by year' },
    cityValue: 'City',
    limit: 'Limit',
    limit2030: 'From 2030',
    method: 'Method',
    noIndicatorData: 'No data for this indicator yet.',
  },
  it: {
    title: 'Mappa operativa',
    needsAction: 'Da gestire',
    nothing: 'Nessun intervento richiesto.',
    perMin: 'letture/min',
    live: 'in diretta',
    reconnecting: 'riconnessione…',
    switchTo: 'English',
    switchLabel: 'Switch to English',
    layers: 'Livelli e legenda',
    showStates: 'Stati mostrati',
    stale: 'silente da 3 cadenze',
    noData: 'ancora nessun dato',
    belowWarn: (w, u) => `sotto ${w} ${u}`,
    between: (w, a, u) => `${w}–${a} ${u}`,
    atLeast: (a, u) => `${a} ${u} o più`,
    lampOk: 'regolare',
    lampFault: 'accesa di giorno o spenta di notte',
    level: (lo, hi, u) => (hi === null ? `${lo} ${u} o più` : lo === null ? `sotto ${hi} ${u}` : `${lo}–${hi} ${u}`),
    lit_by_day: 'Accesa di giorno',
    dark_at_night: 'Spenta di notte',
    lit: 'accesa',
    dark: 'spenta',
    never: 'Mai segnalato',
    silent: (d) => `Silente da ${d}`,
    above: (m, v, a) => `${m} ${v}, limite ${a}`,
    last24h: 'Ultime 24 ore',
    noReadings: 'Nessuna lettura nelle ultime 24 ore.',
    loading: 'Caricamento…',
    chartFailed: 'Impossibile caricare il grafico.',
    unplaced: (n) => `${n} sensori senza posizione non sono sulla mappa.`,
    showPanel: 'Da gestire',
    hidePanel: 'Nascondi elenco',
    state: { ok: 'normale', warn: 'attenzione', alarm: 'da gestire', stale: 'silente', none: 'nessun dato', activity: 'attività' },
    loadFailed: 'L’hub non risponde; nuovo tentativo.',
    history: (pct, rate) => `Caricamento dello storico: ${pct} % (${rate} messaggi/s)`,
    olderHistory: (pct, day) => `Storico meno recente: ${pct} % (fino al ${day})`,
    navMap: 'Mappa',
    navIndicators: 'Indicatori',
    alerts: 'Allarmi',
    noAlerts: 'Nessun allarme aperto.',
    rule: (r, th) => `${r.replace(/_/g, ' ')} (soglia ${th})`,
    silenceRule: (d) => `nessuna lettura da ${d}`,
    severity: { info: 'Informazione', warning: 'Attenzione', critical: 'Critico' },
    openSince: (d) => `Aperto da ${d}`,
    acknowledged: 'Preso in carico',
    showOnMap: 'Mostra sulla mappa',
    acknowledge: 'Prendi in carico',
    ackNote: 'Nota (cosa è stato fatto)',
    confirmAck: 'Conferma',
    tokenRefused: 'Il token operatore è stato rifiutato.',
    alreadyHandled: 'Già preso in carico da altri, o rientrato.',
    ackFailed: 'L’hub non ha potuto registrare la presa in carico; riprova.',
    operator: 'Operatore',
    operatorOn: 'Operatore (token salvato su questo dispositivo)',
    signedIn: (name, role) => `Accesso come ${name} (${role})`,
    roles: { viewer: 'lettore', operator: 'operatore', admin: 'amministratore' },
    whatIs: 'Che cos’è questo sensore?',
    purpose: 'Scopo',
    responsible: 'Responsabile',
    contact: 'Contatto',
    personalData: 'Dati personali',
    capturesPersonal: (basis) => `può raccoglierne; base giuridica: ${basis}`,
    noPersonal: 'non ne raccoglie',
    operatorToken: 'Token operatore',
    save: 'Salva',
    forget: 'Dimentica il token',
    indicatorsTitle: 'Indicatori del mandato',
    indicatorsIntro: 'Calcolati dall’hub sulle letture archiviate, per tutta la città. La linea rossa è il limite di legge, quella arancione il valore dal 2030.',
    periodName: { day: 'per giorno', month: 'per mese', year: 'per anno' },
    cityValue: 'Città',
    limit: 'Limite',
    limit2030: 'Dal 2030',
    method: 'Metodo',
    noIndicatorData: 'Ancora nessun dato per questo indicatore.',
  },
};

/** Italian names of the built-in metrics; other metrics show their configured title or key. */
const METRICS_IT = {
  fill_level: 'riempimento',
  temperature: 'temperatura',
  battery: 'batteria',
  distance: 'distanza',
  power: 'potenza',
  energy: 'energia',
  dimming: 'regolazione',
  count_in: 'passaggi in entrata',
  count_out: 'passaggi in uscita',
  interval_s: 'intervallo',
  pm10: 'PM10',
  pm2_5: 'PM2,5',
  no2: 'NO₂',
  o3: 'O₃',
  humidity: 'umidità',
};
const METRICS_EN = { pm10: 'PM10', pm2_5: 'PM2.5', no2: 'NO₂', o3: 'O₃', count_in: 'bicycles in', count_out: 'bicycles out' };

const KEY = 'cityhub.lang';

export function initialLang() {
  try {
    const saved = localStorage.getItem(KEY);
    if (saved === 'it' || saved === 'en') return saved;
  } catch (_) {
    /* storage may be off */
  }
  const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || 'en'];
  return langs.some((l) => l.toLowerCase().startsWith('it')) ? 'it' : 'en';
}

export function saveLang(lang) {
  try {
    localStorage.setItem(KEY, lang);
  } catch (_) {
    /* storage may be off */
  }
}

export function strings(lang) {
  return STRINGS[lang] || STRINGS.en;
}

export function metricLabel(lang, kind, metric) {
  if (lang === 'it' && METRICS_IT[metric]) return METRICS_IT[metric];
  const m = kind && kind.metrics.find((x) => x.name === metric);
  if (m && m.title) return m.title;
  return METRICS_EN[metric] || metric.replace(/_/g, ' ');
}

export function kindTitle(lang, kind) {
  return (lang === 'it' && kind.title_it) || kind.title;
}

/** "5 min", "2 h", "3 d": how long ago, in the page's language. */
export function duration(lang, ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  const fmt = (n, unit) => new Intl.NumberFormat(lang, { style: 'unit', unit, unitDisplay: 'short', maximumFractionDigits: 0 }).format(n);
  if (s < 90) return fmt(s, 'second');
  if (s < 90 * 60) return fmt(s / 60, 'minute');
  if (s < 36 * 3600) return fmt(s / 3600, 'hour');
  return fmt(s / 86400, 'day');
}

export function number(lang, v) {
  return new Intl.NumberFormat(lang, { maximumFractionDigits: Math.abs(v) < 10 ? 2 : 1 }).format(v);
}
