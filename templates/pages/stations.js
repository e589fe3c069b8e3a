// What the station and expo screens share: the access token, the school's stations, the
// kitchen's live orders kept from the `kitchen:<school>` topic (a snapshot, then frames in
// sequence; after a reconnect, exactly what was missed with `since`), and the API calls.
(function () {
  'use strict';
  const parts = location.pathname.split('/');
  const schoolId = parts[2];
  const token = new URLSearchParams(location.hash.slice(1)).get('token') || localStorage.getItem('tiffin.token');
  if (token) localStorage.setItem('tiffin.token', token);
  const orders = new Map();
  const GONE = ['picked_up', 'cancelled', 'uncollected'];
  let last = null;

  async function api(method, path, body) {
    const r = await fetch(`/api/v1${path}`, {
      method,
      headers: { 'Authorization': `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await r.json().catch(() => null);
    if (!r.ok) throw new Error(json && json.error ? json.error.message : `HTTP ${r.status}`);
    return json;
  }

  // An action's answer for TiffinKeys: nothing when done, else why not.
  async function act(path, body) {
    try { await api('POST', path, body); return null; } catch (e) { return e.message; }
  }

  function setStatus(ok, text) {
    const s = document.getElementById('status');
    if (!s) return;
    s.className = ok ? '' : 'stale';
    s.textContent = text;
  }

  // onChange(frame) after every frame applied; onAlert(frame) for alerts of the moment.
  function follow(onChange, onAlert) {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?access_token=${encodeURIComponent(token)}`);
    ws.onopen = () => {
      const sub = { type: 'subscribe', topic: `kitchen:${schoolId}` };
      if (last !== null) sub.since = last;
      ws.send(JSON.stringify(sub));
    };
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      if (f.type === 'subscribed') { setStatus(true, 'live'); return; }
      if (f.type === 'error') { setStatus(false, f.message); return; }
      if (f.type.startsWith('alert.')) { onAlert(f); return; }
      if (f.seq === undefined) return;
      if (f.type === 'snapshot') {
        orders.clear();
        for (const o of f.data.orders) orders.set(o.id, o);
      } else {
        const o = f.data.order;
        if (GONE.includes(o.state)) orders.delete(o.id); else orders.set(o.id, o);
      }
      last = f.seq;
      document.body.dataset.lastSeq = last;
      onChange(f);
    };
    ws.onclose = () => {
      setStatus(false, 'disconnected');
      setTimeout(() => follow(onChange, onAlert), 1000);
    };
  }

  function alertText(f) {
    const d = f.data;
    const what = f.type === 'alert.card_in_use'
      ? `${d.student_name}'s ${d.card.status} card was presented`
      : f.type === 'alert.allergy_hold'
        ? `${d.student_name}'s meal is on allergy hold: check before handing it over`
        : f.type;
    return `${new Date(f.at).toLocaleTimeString()} · ${d.reader_name}: ${what}`;
  }

  window.TiffinKitchen = {
    schoolId,
    token,
    orders,
    api,
    act,
    follow,
    alertText,
    // Live orders, oldest first.
    sorted: () => [...orders.values()].sort((a, b) => a.placed_at.localeCompare(b.placed_at)),
    stations: () => api('GET', `/schools/${schoolId}/stations`),
  };
})();
