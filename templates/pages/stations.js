// What the station and expo screens share: the kitchen's live orders kept from the
// `kitchen:<school>` topic (a snapshot, then frames in sequence; after a reconnect, exactly
// what was missed with `since`), the school's stations, and the API calls. Signing in (a
// paired screen's own credential, or a person's token), renewing, reconnecting and the
// header are screen.js's, as on the dashboard.
(function () {
  'use strict';
  const schoolId = location.pathname.split('/')[2];
  const orders = new Map();
  const GONE = ['picked_up', 'cancelled', 'uncollected'];
  let last = null;

  async function api(method, path, body) {
    const init = { method };
    if (body !== undefined) {
      init.headers = { 'Content-Type': 'application/json' };
      init.body = JSON.stringify(body);
    }
    const r = await TiffinScreen.api(`/api/v1${path}`, init);
    const json = await r.json().catch(() => null);
    if (!r.ok) throw new Error(json && json.error ? json.error.message : `HTTP ${r.status}`);
    return json;
  }

  // An action's answer for TiffinKeys: nothing when done, else why not.
  async function act(path, body) {
    try { await api('POST', path, body); return null; } catch (e) { return e.message; }
  }

  function apply(f) {
    if (f.type === 'snapshot') {
      orders.clear();
      for (const o of f.data.orders) orders.set(o.id, o);
    } else {
      const o = f.data.order;
      if (GONE.includes(o.state)) orders.delete(o.id); else orders.set(o.id, o);
    }
    last = f.seq;
    document.body.dataset.lastSeq = last;
  }

  // kinds: the kinds of paired screen the page shows (any other goes to its own page);
  // onLive() each time the subscription is live; onChange(frame) after every frame applied;
  // onAlert(frame) for alerts of the moment.
  function follow({ kinds, onLive, onChange, onAlert }) {
    TiffinScreen.start({
      kinds,
      subscribe() {
        const sub = { type: 'subscribe', topic: `kitchen:${schoolId}` };
        if (last !== null) sub.since = last;
        return sub;
      },
      onFrame(f) {
        if (f.type === 'subscribed') { if (onLive) onLive(); return; }
        if (f.type === 'error') return;
        if (f.type.startsWith('alert.')) { onAlert(f); return; }
        if (f.seq === undefined) return;
        apply(f);
        onChange(f);
      },
    });
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
