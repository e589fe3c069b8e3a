// Sound for kitchen screens, made with WebAudio (nothing to download): a short rising chime
// for a new order, a distinct low triple beep for an alert (allergy hold, card in use).
// A mute button (and the M key) turns it off, remembered per browser. Browsers may refuse
// sound until the page is clicked: a "click to enable sound" prompt says so, and the first
// click or key press enables it.
//
// For tests and the curious: body[data-sound] is "on", "muted" or "blocked";
// body[data-sounds] counts the sounds played (or due while blocked), body[data-last-sound]
// names the last one ("order" or "alert").
(function () {
  'use strict';
  const S = { ctx: null, muted: localStorage.getItem('tiffin.muted') === '1', played: 0 };

  function context() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!S.ctx && Ctx) {
      S.ctx = new Ctx();
      S.ctx.onstatechange = show;
    }
    return S.ctx;
  }

  function running() {
    const ctx = context();
    return !!ctx && ctx.state === 'running';
  }

  // Notes as [frequency in Hz, start in s, length in s], on one oscillator type.
  function notes(type, list) {
    const ctx = context();
    const t0 = ctx.currentTime + 0.02;
    for (const [freq, start, length] of list) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = type;
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.0001, t0 + start);
      gain.gain.exponentialRampToValueAtTime(0.3, t0 + start + 0.015);
      gain.gain.exponentialRampToValueAtTime(0.0001, t0 + start + length);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t0 + start);
      osc.stop(t0 + start + length + 0.05);
    }
  }

  const SOUNDS = {
    order: () => notes('sine', [[880, 0, 0.18], [1320, 0.14, 0.3]]),
    alert: () => notes('square', [[440, 0, 0.15], [440, 0.22, 0.15], [330, 0.44, 0.35]]),
  };

  function show() {
    const state = S.muted ? 'muted' : running() ? 'on' : 'blocked';
    document.body.dataset.sound = state;
    const button = document.getElementById('sound-toggle');
    if (button) {
      button.textContent = S.muted ? 'Sound: off (M)' : 'Sound: on (M)';
      button.setAttribute('aria-pressed', String(!S.muted));
    }
    const prompt = document.getElementById('sound-prompt');
    if (prompt) prompt.hidden = state !== 'blocked';
  }

  function enable() {
    const ctx = context();
    if (ctx && ctx.state !== 'running') ctx.resume().then(show, show);
  }

  function play(kind) {
    if (S.muted || !SOUNDS[kind]) return;
    S.played += 1;
    document.body.dataset.sounds = String(S.played);
    document.body.dataset.lastSound = kind;
    if (running()) SOUNDS[kind]();
    else show();
  }

  function toggle() {
    S.muted = !S.muted;
    localStorage.setItem('tiffin.muted', S.muted ? '1' : '0');
    if (!S.muted) enable();
    show();
  }

  function mount() {
    const style = document.createElement('style');
    style.textContent = `
      #sound-box { position: fixed; right: .5rem; bottom: .5rem; display: flex; gap: .5rem; z-index: 5; }
      #sound-box button { font-size: .95rem; padding: .3rem .6rem; border-radius: .3rem; border: 1px solid #888; background: #fff; }
      #sound-prompt { background: #e90 !important; color: #000; font-weight: bold; }`;
    document.head.appendChild(style);
    const box = document.createElement('div');
    box.id = 'sound-box';
    box.innerHTML = '<button id="sound-prompt" hidden>Click to enable sound</button><button id="sound-toggle"></button>';
    document.body.appendChild(box);
    document.getElementById('sound-toggle').addEventListener('click', (e) => { e.stopPropagation(); toggle(); });
    document.getElementById('sound-prompt').addEventListener('click', enable);
    // Any click or key is the user's gesture the browser waits for.
    document.addEventListener('pointerdown', enable, true);
    document.addEventListener('keydown', enable, true);
    context();
    enable();
    show();
  }

  if (document.body) mount(); else document.addEventListener('DOMContentLoaded', mount);
  window.TiffinSound = { play, toggle, get muted() { return S.muted; } };
})();
