// Keyboard and bump bars: every action of a kitchen screen from the keys alone.
// A USB bump bar is a keyboard: it sends digits, arrows, Enter and letters, so the same
// keys serve both. A screen calls TiffinKeys.attach({...}) once and TiffinKeys.refresh()
// after each redraw; the selection follows its order across redraws.
//
//   arrows, Home, End   move the selection        1-9   select the Nth order
//   Enter, Space, B     bump the selected order   R     recall the last bumped
//   X, Delete           cancel (asks first)       M     sound on/off
//   ?                   this help                 Esc   close a question or the help
(function () {
  'use strict';
  const K = { selected: null, index: 0, lastBumped: null, opts: null };

  function cards() {
    return K.opts ? [...document.querySelectorAll(K.opts.cards)] : [];
  }

  function overlay(id, html) {
    let el = document.getElementById(id);
    if (!el) {
      el = document.createElement('div');
      el.id = id;
      el.className = 'keys-overlay';
      el.setAttribute('role', 'dialog');
      document.body.appendChild(el);
    }
    el.innerHTML = html;
    el.hidden = false;
    return el;
  }

  function closeOverlays() {
    let closed = false;
    for (const id of ['keys-help', 'keys-confirm']) {
      const el = document.getElementById(id);
      if (el && !el.hidden) { el.hidden = true; closed = true; }
    }
    K.confirming = null;
    return closed;
  }

  function refresh() {
    const list = cards();
    let i = list.findIndex((c) => c.dataset.orderId === K.selected);
    if (i < 0 && list.length) i = Math.min(K.index, list.length - 1);
    list.forEach((c, j) => {
      c.classList.toggle('selected', j === i);
      const n = c.querySelector('.keys-number');
      if (n) n.textContent = j < 9 ? String(j + 1) : '';
    });
    if (i >= 0) {
      K.selected = list[i].dataset.orderId;
      K.index = i;
      if (list[i].scrollIntoView) list[i].scrollIntoView({ block: 'nearest' });
    } else {
      K.selected = null;
    }
    document.body.dataset.selected = K.selected || '';
  }

  function select(i) {
    const list = cards();
    if (!list.length) return;
    i = Math.max(0, Math.min(list.length - 1, i));
    K.selected = list[i].dataset.orderId;
    K.index = i;
    refresh();
  }

  function say(text) {
    const el = overlay('keys-toast', '');
    el.className = 'keys-toast';
    el.textContent = text;
    clearTimeout(K.toastTimer);
    K.toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  async function run(action, id) {
    if (!id || !K.opts[action]) return;
    try {
      const error = await K.opts[action](id);
      if (error) { say(error); return; }
      if (action === 'bump') K.lastBumped = id;
      if (action === 'recall') K.lastBumped = null;
    } catch (e) {
      say(String(e));
    }
  }

  // A paired screen may not cancel (a person answers for a cancellation); the page says which.
  const canCancel = () => K.opts.cancel && (!K.opts.mayCancel || K.opts.mayCancel());

  function confirmCancel(id) {
    if (!canCancel() || !id) return;
    const who = K.opts.describe ? K.opts.describe(id) : 'this order';
    const el = overlay('keys-confirm', '<p></p><p><kbd>Y</kbd> or <kbd>Enter</kbd> cancel it · <kbd>N</kbd> or <kbd>Esc</kbd> keep it</p>');
    el.querySelector('p').textContent = `Cancel ${who}?`;
    K.confirming = id;
  }

  function help() {
    const rows = [
      ['← ↑ → ↓ Home End', 'move the selection'],
      ['1 – 9', 'select an order by its number'],
      ['Enter · Space · B', K.opts.bumpHelp || 'bump: the next step'],
    ];
    if (K.opts.recall) rows.push(['R', 'recall the last bumped order']);
    if (canCancel()) rows.push(['X · Delete', 'cancel the selected order (asks first)']);
    rows.push(['M', 'sound on or off'], ['?', 'this help'], ['Esc', 'close']);
    const el = overlay('keys-help', '<h2>Keys</h2><table></table>');
    const table = el.querySelector('table');
    for (const [key, what] of rows) {
      const tr = table.insertRow();
      tr.insertCell().textContent = key;
      tr.insertCell().textContent = what;
    }
  }

  function onKey(e) {
    if (!K.opts || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (K.confirming) {
      if (key === 'y' || key === 'Enter') {
        const id = K.confirming;
        closeOverlays();
        run('cancel', id);
      } else if (key === 'n' || key === 'Escape') {
        closeOverlays();
      }
      e.preventDefault();
      return;
    }
    const list = cards();
    let handled = true;
    switch (key) {
      case 'ArrowDown': case 'ArrowRight': select(K.index + (K.selected ? 1 : 0)); break;
      case 'ArrowUp': case 'ArrowLeft': select(K.index - 1); break;
      case 'Home': select(0); break;
      case 'End': select(list.length - 1); break;
      case 'Enter': case ' ': case 'b': run('bump', K.selected); break;
      case 'r': run('recall', K.lastBumped); break;
      case 'x': case 'Delete': confirmCancel(K.selected); break;
      case 'm': if (window.TiffinSound) window.TiffinSound.toggle(); break;
      case '?': if (document.getElementById('keys-help')?.hidden === false) closeOverlays(); else help(); break;
      case 'Escape': closeOverlays(); break;
      default:
        if (/^[1-9]$/.test(key) && Number(key) <= list.length) select(Number(key) - 1);
        else handled = false;
    }
    if (handled) e.preventDefault();
  }

  const style = document.createElement('style');
  style.textContent = `
    .selected { outline: .25rem solid #26c; outline-offset: 2px; }
    .keys-number { display: inline-block; min-width: 1.2em; margin-right: .3em; color: #26c; font-weight: bold; }
    .keys-overlay { position: fixed; left: 50%; top: 20%; transform: translateX(-50%); z-index: 10;
      background: #fff; color: #222; border: 2px solid #223; border-radius: .5rem; padding: 1rem 1.5rem;
      box-shadow: 0 .5rem 2rem rgba(0,0,0,.3); font-size: 1.1rem; }
    .keys-overlay td { padding: .2rem .8rem .2rem 0; }
    .keys-overlay td:first-child { font-family: monospace; font-weight: bold; }
    .keys-toast { top: auto; bottom: 1rem; background: #c33; color: #fff; border-color: #c33; }
    #keys-hint { position: fixed; left: .5rem; bottom: .5rem; font-size: .85rem; color: #555; }`;
  document.head.appendChild(style);

  window.TiffinKeys = {
    // opts: { cards: CSS selector of the order cards, bump(id), recall(id), cancel(id)
    //         (each resolves to an error message or nothing), mayCancel(), describe(id),
    //         bumpHelp }
    attach(opts) {
      K.opts = opts;
      document.addEventListener('keydown', onKey);
      document.addEventListener('click', (e) => {
        const card = e.target.closest && e.target.closest(opts.cards);
        if (card) { K.selected = card.dataset.orderId; refresh(); }
      });
      const hint = document.createElement('div');
      hint.id = 'keys-hint';
      hint.textContent = 'Press ? for keys';
      document.body.appendChild(hint);
      refresh();
    },
    refresh,
    confirmCancel,
    say,
    get selected() { return K.selected; },
    get lastBumped() { return K.lastBumped; },
    set lastBumped(id) { K.lastBumped = id; },
  };
})();
