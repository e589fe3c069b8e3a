// What every kitchen screen page shares: signing in (a paired screen's own credential, or a
// person's token from the URL fragment), renewing before expiry, reconnecting after any loss
// with the page's `since`, the header (school, screen, clock), and the pairing and revoked
// states. A page calls TiffinScreen.start({ subscribe, onFrame }) and TiffinScreen.api(...).
(function () {
  'use strict';
  const STORE = 'tiffin.screen'; // a paired screen's refresh token
  const PERSON = 'tiffin.token'; // a person's access token (the older way)
  // Where a screen of each kind lands once paired; a station screen on its own station.
  const HOME = {
    kitchen: (s) => `/dashboard/${s.school_id}`,
    station: (s) => `/station/${s.school_id}/${s.station_id}`,
    expo: (s) => `/expo/${s.school_id}`,
    board: (s) => `/board/${s.school_id}`,
  };
  const cred = { access: null, expiresAt: 0, screen: null, person: false };
  let page = null; // the page's { subscribe, onFrame, onSignedIn }
  let socket = null;
  let failures = 0;
  let renewing = null;
  let renewTimer = null;
  let connectTimer = null;
  let lastFrameAt = null;
  let revoked = false;

  const $ = (id) => document.getElementById(id);
  const backoff = () => Math.min(1000 * 2 ** Math.min(failures++, 4), 15000);
  const saved = () => {
    try { return JSON.parse(localStorage.getItem(STORE)); } catch (e) { return null; }
  };

  async function post(path, body) {
    const init = { method: 'POST' };
    if (body !== undefined) {
      init.headers = { 'Content-Type': 'application/json' };
      init.body = JSON.stringify(body);
    }
    try {
      const r = await fetch(path, init);
      let json = null;
      try { json = await r.json(); } catch (e) { json = null; }
      return { status: r.status, body: json };
    } catch (e) {
      return { status: 0, body: null }; // the hub is away
    }
  }

  // --- the header and the states a screen can be in ---

  const style = document.createElement('style');
  style.textContent = `
    #screen-overlay { position: fixed; inset: 0; z-index: 10; display: flex; flex-direction: column;
      align-items: center; justify-content: center; gap: 1rem; background: #223; color: #fff;
      font-family: system-ui, sans-serif; text-align: center; padding: 2rem; }
    #screen-overlay.hidden { display: none; }
    #screen-overlay.revoked { background: #7a1010; }
    #screen-overlay h1 { font-size: 2.4rem; margin: 0; }
    #screen-overlay p { font-size: 1.3rem; max-width: 40rem; margin: 0; color: #dde; }
    #pairing-code { font: bold 5rem ui-monospace, monospace; letter-spacing: .5rem; background: #fff;
      color: #112; padding: .5rem 2rem; border-radius: .6rem; }
    #pair-again { font-size: 1.3rem; padding: .5rem 1.5rem; }
    #clock { font-variant-numeric: tabular-nums; }
    #screen-name { opacity: .8; }`;
  document.head.appendChild(style);

  function overlay(kind, parts) {
    let o = $('screen-overlay');
    if (!o) {
      o = document.createElement('div');
      o.id = 'screen-overlay';
      document.body.appendChild(o);
    }
    o.className = kind;
    o.replaceChildren(...parts.map(([tag, text, id]) => {
      const el = document.createElement(tag);
      el.textContent = text;
      if (id) el.id = id;
      return el;
    }));
    return o;
  }

  function setStatus(ok, text) {
    const s = $('status');
    if (s) { s.className = ok ? '' : 'stale'; s.textContent = text; }
    const banner = $('banner');
    if (banner) {
      banner.className = ok ? '' : 'shown';
      banner.textContent = ok ? '' : `Not live: this screen may be behind. ${text}`;
    }
    document.body.dataset.live = ok ? 'yes' : 'no';
  }

  function disconnected() {
    return 'disconnected, reconnecting' +
      (lastFrameAt ? ` — last update ${lastFrameAt.toLocaleTimeString()}` : '');
  }

  function header(schoolName, screenName) {
    if ($('school') && schoolName) $('school').textContent = schoolName;
    if ($('screen-name')) $('screen-name').textContent = screenName || '';
  }

  function tick() {
    if ($('clock')) {
      $('clock').textContent = new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }
  }

  // --- pairing ---

  async function pairing() {
    revoked = false;
    setStatus(false, 'not paired');
    const p = await post('/api/v1/auth/screens/pairings');
    if (p.status !== 201) {
      overlay('pairing', [['h1', 'Pair this screen'], ['p', 'Cannot reach the hub; trying again…']]);
      setTimeout(pairing, backoff());
      return;
    }
    failures = 0;
    const until = new Date(Date.now() + p.body.expires_in * 1000);
    overlay('pairing', [
      ['h1', 'Pair this screen'],
      ['div', p.body.code, 'pairing-code'],
      ['p', 'A school admin or kitchen staff enters this code in Tiffin, with a name for the screen ' +
        'and its kind (kitchen, station, expo or board; a station screen also names its station).'],
      ['p', `The code works until ${until.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}; ` +
        'a new one appears after that.'],
    ]);
    const poll = async () => {
      const r = await post('/api/v1/auth/screens/claim', { pairing_secret: p.body.pairing_secret });
      if (r.status === 200) {
        paired(r.body);
      } else if (r.status === 202 || r.status === 0 || r.status === 429 || r.status >= 500) {
        setTimeout(poll, 2000);
      } else {
        pairing(); // expired or unknown: a new code
      }
    };
    setTimeout(poll, 2000);
  }

  function paired(tokens) {
    signedIn(tokens);
    goHomeOrConnect();
  }

  // A page shows a screen of the kinds it lists, of its school (and a station's page a station
  // screen only of that station); any other goes where its kind lands.
  function goHomeOrConnect() {
    const s = cred.screen;
    const [, , school, station] = location.pathname.split('/');
    const fits = page.kinds.includes(s.kind) && school === s.school_id &&
      (s.kind !== 'station' || station === undefined || station === s.station_id);
    if (!fits) {
      location.replace(HOME[s.kind](s));
      return;
    }
    overlay('hidden', []);
    connect();
  }

  function showRevoked() {
    revoked = true;
    localStorage.removeItem(STORE);
    cred.access = null;
    clearTimeout(renewTimer);
    clearTimeout(connectTimer);
    retire();
    setStatus(false, 'revoked');
    overlay('revoked', [
      ['h1', 'This screen was removed'],
      ['p', `Its access was revoked at ${new Date().toLocaleTimeString()}. It shows nothing until ` +
        'someone pairs it again.'],
      ['button', 'Pair again', 'pair-again'],
    ]);
    $('pair-again').onclick = pairing;
  }

  // --- the credential ---

  function signedIn(tokens) {
    localStorage.setItem(STORE, JSON.stringify({ refresh_token: tokens.refresh_token }));
    cred.access = tokens.access_token;
    cred.expiresAt = Date.now() + tokens.expires_in * 1000;
    cred.screen = tokens.screen;
    failures = 0;
    header(tokens.screen.school_name, tokens.screen.name);
    document.body.dataset.screenId = tokens.screen.id;
    // Renew well before expiry, then move the socket onto the new token.
    clearTimeout(renewTimer);
    renewTimer = setTimeout(async () => {
      if (await renew()) reconnectNow();
    }, tokens.expires_in * 600);
    if (page && page.onSignedIn) page.onSignedIn(tokens.screen);
  }

  // One renewal at a time: each spends the refresh token the last one returned.
  function renew() {
    if (!renewing) {
      renewing = renewOnce().finally(() => { renewing = null; });
    }
    return renewing;
  }

  async function renewOnce() {
    const stored = saved();
    if (!stored) { pairing(); return false; }
    const r = await post('/api/v1/auth/screens/refresh', { refresh_token: stored.refresh_token });
    if (r.status === 200) {
      signedIn(r.body);
      document.body.dataset.renewals = Number(document.body.dataset.renewals || 0) + 1;
      return true;
    }
    if (r.status === 401) { showRevoked(); return false; }
    // Away, restarting or busy: keep trying; the socket, if any, goes on meanwhile.
    clearTimeout(renewTimer);
    renewTimer = setTimeout(async () => {
      if (await renew()) reconnectNow();
    }, backoff());
    return false;
  }

  // --- the socket ---

  function retire() {
    const old = socket;
    socket = null;
    if (old) old.close(1000, 'replaced');
  }

  function reconnectNow() {
    retire();
    connect();
  }

  async function connect() {
    clearTimeout(connectTimer);
    if (revoked || (socket && socket.readyState <= 1)) return;
    if (!cred.person && cred.expiresAt - Date.now() < 5000) {
      if (!(await renew())) return; // it retries, then reconnects
      if (socket && socket.readyState <= 1) return;
    }
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?access_token=${encodeURIComponent(cred.access)}`);
    socket = ws;
    ws.onopen = () => ws.send(JSON.stringify(page.subscribe()));
    ws.onmessage = (m) => {
      if (ws !== socket) return;
      const f = JSON.parse(m.data);
      if (f.type === 'subscribed') { failures = 0; setStatus(true, 'live'); }
      if (f.type === 'error') setStatus(false, f.message);
      if (f.seq !== undefined) lastFrameAt = new Date();
      page.onFrame(f);
    };
    ws.onclose = (ev) => {
      if (ws !== socket) return; // replaced on purpose
      socket = null;
      if ((ev.reason || '').includes('revoked')) { renew(); return; }
      setStatus(false, disconnected());
      connectTimer = setTimeout(async () => {
        // A refused upgrade may be a revoked screen or an expired token: renewing tells.
        if (!cred.person && ev.code === 1006 && failures > 2) await renew();
        connect();
      }, backoff());
    };
  }

  // --- the page's side ---

  async function api(path, init) {
    const call = () => fetch(path, Object.assign({}, init, {
      headers: Object.assign({ 'Authorization': `Bearer ${cred.access}` }, (init || {}).headers),
    }));
    let r = await call();
    if (r.status === 401 && !cred.person) {
      if (await renew()) r = await call();
    }
    return r;
  }

  function start(options) {
    page = Object.assign({ kinds: ['kitchen'] }, options);
    tick();
    setInterval(tick, 1000);
    const fragment = new URLSearchParams(location.hash.slice(1)).get('token');
    if (fragment) {
      localStorage.setItem(PERSON, fragment);
      history.replaceState(null, '', location.pathname + location.search);
    }
    const person = localStorage.getItem(PERSON);
    if (saved()) {
      renew().then((ok) => { if (ok) goHomeOrConnect(); });
    } else if (person && page.subscribe) {
      cred.person = true;
      cred.access = person;
      const school = location.pathname.split('/')[2];
      api(`/api/v1/schools/${school}`).then((r) => r.ok && r.json())
        .then((s) => s && header(s.name, 'signed in by a person'));
      connect();
    } else {
      pairing();
    }
  }

  // Whether this page may cancel orders: a person signed in may; a paired screen may not.
  const mayCancel = () => cred.person;

  window.TiffinScreen = { start, api, HOME, mayCancel };
})();
