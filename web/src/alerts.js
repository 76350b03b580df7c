// The alerts the hub raised (GET /api/v1/alerts), at the top of the "Needs action"
// panel, kept current by `event: alert` on the live stream. An operator who has
// entered the operator token on this device can acknowledge one with a note.

const TOKEN_KEY = 'cityhub.operatorToken';

export function savedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch (_) {
    return '';
  }
}

export function saveToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch (_) {
    /* storage may be off: the token lasts for this page only */
  }
}

/** Open and acknowledged alerts, newest first, with one entry per id. */
export function merge(list, event) {
  const a = event.alert;
  const rest = list.filter((x) => x.id !== a.id);
  if (a.state === 'cleared') return rest;
  return [a, ...rest].sort((x, y) => Date.parse(y.raised_at) - Date.parse(x.raised_at) || y.id - x.id);
}

/**
 * The panel's alert list. `deps`: `el` (element builder), `T` (strings), `lang()`,
 * `sensorName(id)`, `metricLabel(kind, metric)`, `focusSensor(id)`, `duration(ms)`.
 */
export class AlertsPanel {
  constructor(deps) {
    this.d = deps;
    this.alerts = [];
    this.token = savedToken();
    this.acking = null; // the id whose note form is open
    this.message = '';
    this.who = null; // { name, role } of the saved token, from GET /api/v1/me
    this.whoAmI();
  }

  /** Who the saved token signs in as; a refused token is forgotten. */
  async whoAmI() {
    if (!this.token) {
      this.who = null;
      return;
    }
    try {
      const r = await fetch('api/v1/me', { headers: { Accept: 'application/json', Authorization: `Bearer ${this.token}` } });
      if (r.status === 401 || r.status === 403) {
        this.token = '';
        saveToken('');
        this.who = null;
        this.message = this.d.T().tokenRefused;
      } else if (r.ok) {
        this.who = await r.json();
      }
    } catch (e) {
      console.warn('me', e);
    }
    this.render();
  }

  async load() {
    const r = await fetch('api/v1/alerts?state=open,acknowledged&limit=1000', { headers: { Accept: 'application/json' } });
    if (!r.ok) throw new Error(`alerts: HTTP ${r.status}`);
    this.alerts = (await r.json()).alerts;
    this.render();
  }

  onEvent(ev) {
    try {
      this.alerts = merge(this.alerts, JSON.parse(ev.data));
      this.render();
    } catch (e) {
      console.warn('alert event', e);
    }
  }

  async ack(id, note) {
    const t = this.d.T();
    const r = await fetch(`api/v1/alerts/${id}/ack`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${this.token}` },
      body: JSON.stringify(note ? { note } : {}),
    });
    if (r.ok) {
      this.alerts = merge(this.alerts, { alert: await r.json() });
      this.acking = null;
      this.message = '';
    } else if (r.status === 401 || r.status === 403) {
      this.message = t.tokenRefused;
    } else if (r.status === 409) {
      this.message = t.alreadyHandled;
      await this.load();
    } else {
      this.message = t.ackFailed;
    }
    this.render();
  }

  /** What the rule says, in the page's language (configured rules by their id). */
  ruleText(a, silence) {
    const { T, metricLabel, kindTitle, duration } = this.d;
    const t = T();
    if (silence) return t.silenceRule(duration(a.threshold * 1000));
    if (a.rule.endsWith('_lamp_fault')) return t.lampFault;
    if (a.rule === `${a.kind}_${a.metric}_alarm`) return `${kindTitle(a.kind)}: ${metricLabel(a.kind, a.metric)} ≥ ${a.threshold}`;
    return t.rule(a.rule, a.threshold);
  }

  item(a) {
    const { el, T, sensorName, metricLabel, focusSensor, duration } = this.d;
    const t = T();
    const since = duration(Date.now() - Date.parse(a.raised_at));
    // Silence alerts carry seconds without a reading.
    const silence = a.metric === 'silence_s';
    const what = silence
      ? `${sensorName(a.sensor)} · ${t.silent(duration(a.raised_value * 1000))}`
      : `${sensorName(a.sensor)} · ${metricLabel(a.kind, a.metric)} ${a.raised_value}`;
    const rule = this.ruleText(a, silence);
    const state = a.state === 'acknowledged' ? `${t.acknowledged}${a.ack_note ? `: ${a.ack_note}` : ''}` : t.openSince(since);
    const show = el('button', { type: 'button', class: 'link', 'data-alert': String(a.id) }, t.showOnMap);
    show.addEventListener('click', () => focusSensor(a.sensor));
    const li = el(
      'li',
      { class: `alert sev-${a.severity} st-${a.state}`, 'data-alert': String(a.id) },
      el('div', { class: 'what' }, what),
      el('div', { class: 'why' }, `${t.severity[a.severity] || a.severity} · ${rule}`),
      el('div', { class: 'why' }, state),
      show,
    );
    if (a.state === 'open' && this.token) {
      if (this.acking === a.id) {
        const input = el('input', { type: 'text', maxlength: '1000', 'aria-label': t.ackNote, placeholder: t.ackNote });
        const form = el('form', { class: 'ack' }, input, el('button', { type: 'submit' }, t.confirmAck));
        form.addEventListener('submit', (e) => {
          e.preventDefault();
          this.ack(a.id, input.value.trim());
        });
        li.append(form);
        setTimeout(() => input.focus(), 0);
      } else {
        const b = el('button', { type: 'button', class: 'ack-open' }, t.acknowledge);
        b.addEventListener('click', () => {
          this.acking = a.id;
          this.render();
        });
        li.append(b);
      }
    }
    return li;
  }

  render() {
    const t = this.d.T();
    const $ = (id) => document.getElementById(id);
    const list = $('alerts');
    if (!list) return;
    list.replaceChildren(...this.alerts.map((a) => this.item(a)));
    $('alerts-title').textContent = `${t.alerts} (${this.alerts.length})`;
    $('alerts-empty').hidden = this.alerts.length > 0;
    $('alerts-empty').textContent = t.noAlerts;
    $('alerts-message').hidden = !this.message;
    $('alerts-message').textContent = this.message;
    $('operator-summary').textContent = this.who ? t.signedIn(this.who.name, t.roles[this.who.role] || this.who.role) : this.token ? t.operatorOn : t.operator;
    $('operator-summary').dataset.who = this.who ? this.who.name : '';
    $('operator-label').textContent = t.operatorToken;
    $('operator-save').textContent = this.token ? t.forget : t.save;
    $('operator-token').hidden = !!this.token;
  }

  /** The token form: save a token, or forget the saved one. */
  bind() {
    const $ = (id) => document.getElementById(id);
    $('operator-form').addEventListener('submit', (e) => {
      e.preventDefault();
      if (this.token) {
        this.token = '';
      } else {
        this.token = $('operator-token').value.trim();
        $('operator-token').value = '';
      }
      saveToken(this.token);
      this.message = '';
      this.acking = null;
      this.who = null;
      this.render();
      this.whoAmI();
    });
  }
}
