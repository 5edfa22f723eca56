// The delegate's page: lists the channels with what each carries, plays the chosen one, switches
// language on the same connection, reconnects by itself, and asks for the access code when the
// relay wants one. The protocol is docs/PROTOCOL.md; the audio is player.js.
// "Original underneath" (off by default) asks the relay for the floor of the channel's room too
// (`floor_under`) and has the player mix it quietly under the channel.

import { createPlayer, parseHeader, UNDER_MIN_DB, UNDER_MAX_DB, UNDER_DEFAULT_DB } from './player.js';
import { loadStrings } from './i18n.js';
import { relayWsUrl } from './relays.js';

// The event's halls by name and the page's default language (`page_language` in the event
// file), from /join; the page works without them.
const pageInfo = await fetch('join')
  .then((r) => (r.ok ? r.json() : null))
  .catch(() => null);
const { lang, dir, t } = await loadStrings({ fallback: pageInfo && pageInfo.language });
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// AudioWorklet and WebCodecs need a secure context; `?fallback=1` forces the other path.
const FALLBACK = params.get('fallback') === '1' || !window.isSecureContext;

// Reconnect back-off: back within a fraction of a second after a blip, without hammering a
// relay that is down (the same steps as the boothcast clients).
const BACKOFF_FIRST = 200;
const BACKOFF_MAX = 5000;
// The first attempt after a lost connection comes at a random moment within 300 ms, and each
// later wait is the back-off ±50 % at random: when a relay of a cluster dies, its listeners
// arrive at the others spread out, not all at once.
const FIRST_RETRY_SPREAD = 300;
// Most relay addresses kept: this page's own, then those a cluster tells in `welcome`.
const MAX_RELAYS = 16;
// A ping every 2 s; a connection that brought nothing for 6 s is dead (a Wi-Fi that dropped
// without closing the TCP connection) and is replaced.
const PING_EVERY = 2000;
const DEAD_AFTER = 6000;
// Refusals that a retry would only repeat.
const FINAL = new Set(['unknown_channel', 'bad_message', 'bad_frame', 'forbidden', 'replaced', 'not_hello']);

const stored = {
  get: (k) => {
    try {
      return localStorage.getItem('boothcast.' + k);
    } catch {
      return null;
    }
  },
  set: (k, v) => {
    try {
      if (v === null) localStorage.removeItem('boothcast.' + k);
      else localStorage.setItem('boothcast.' + k, v);
    } catch {}
  },
};

// A hall's own address shows that hall: a channel remembered from another hall is not chosen.
const askedRoom = params.get('room');
const remembered = stored.get('channel');

const state = {
  ws: null,
  welcomed: false,
  channels: [],
  wanted: askedRoom && remembered && !remembered.startsWith(askedRoom + '/') ? null : remembered, // channel id chosen
  // The hall whose languages are shown, with several halls: `?room=ID` (a hall's own address
  // and QR code), else the one chosen last time.
  room: askedRoom || stored.get('room'),
  roomNames: new Map(), // room id → the hall's name (from /join)
  playing: false,
  player: null,
  starting: null,
  // The access code lives for this tab only and is never put in the address.
  code: sessionStorage.getItem('boothcast.code') || '',
  askingCode: false,
  backoff: BACKOFF_FIRST,
  retries: 0, // attempts since the last welcome
  retry: null,
  // WebSocket addresses of the relays, tried in turn: this page's own, then the cluster's.
  relays: null,
  relay: 0,
  lastMessage: 0,
  pingSentAt: 0,
  rttMs: null,
  eventDelayMs: 0,
  carrying: new Map(), // channel id → state text last shown, to announce changes
  switchedAt: null,
  lostConnection: false,
  // The system stopped the sound (the phone locked, a call, another app): the audio context
  // went to `suspended` or `interrupted` while the delegate was listening.
  pausedBySystem: false,
  eventName: '',
  // The original under the interpretation: whether the delegate wants it (remembered), its
  // level in dB (remembered), and the floor channel `subscribed` said comes with the channel.
  under: stored.get('floorUnder') === '1',
  underDb: storedUnderDb(),
  underFrom: null,
  // Listening from outside the hall (remembered; `?remote=1` in the address, the link given to
  // a remote audience or an overflow room, sets it, `?remote=0` clears it): the relaxed
  // delivery class, and the delay that absorbs its writes.
  remote: storedRemote(),
};

function storedRemote() {
  const asked = params.get('remote');
  if (asked === '1' || asked === '0') stored.set('remote', asked);
  return stored.get('remote') === '1';
}

function storedUnderDb() {
  const raw = stored.get('floorUnderDb');
  const v = Number(raw);
  if (raw === null || raw === '' || !Number.isFinite(v)) return UNDER_DEFAULT_DB;
  return Math.min(UNDER_MAX_DB, Math.max(UNDER_MIN_DB, Math.round(v)));
}

// Test hooks for the browser tests, and handy in a console.
window.boothcast = {
  state,
  get player() {
    return state.player;
  },
  select: (id) => select(id),
};

function setPageState(s) {
  document.body.dataset.state = s;
}

function say(text) {
  $('status').textContent = text;
}

function showError(text) {
  $('error').textContent = text;
  $('error').hidden = false;
  setPageState('error');
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

// --- the page's own words -------------------------------------------------------------------

function translate() {
  document.documentElement.lang = lang;
  document.documentElement.dir = dir;
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  document.title = t('title');
  updateExtraHint();
  renderUnder();
}

// --- channels -------------------------------------------------------------------------------

function channelById(id) {
  return state.channels.find((c) => c.id === id) || null;
}

function describe(c) {
  if (c.carrying === 'relay') {
    const via = channelById((c.relay_chain || [])[0]);
    if (c.live && c.live.cough) return t('carrying.cough');
    return t('carrying.relay', { via: via ? channelName(via) : (c.relay_chain || [''])[0] });
  }
  if (c.carrying === 'interpreter' && c.live && c.live.cough) return t('carrying.cough');
  return t('carrying.' + c.carrying);
}

// A channel's name for people: the language in itself; the floor in the page's language.
function channelName(c) {
  return c.lang === 'floor' ? t('floorName') : c.native;
}

// A room's name for people (the event file's), else its id.
function roomName(id) {
  return state.roomNames.get(id) || id;
}

// The event's halls in order, from the channel list.
function rooms() {
  return [...new Set(state.channels.map((c) => c.room))];
}

// --- halls ----------------------------------------------------------------------------------

// An event with one hall looks as if there were no halls. With several, the page shows the
// halls by name, then the chosen hall's languages.
function renderHalls() {
  const all = rooms();
  const several = all.length > 1;
  if (several && state.room && all.length > 0 && !all.includes(state.room)) {
    if (state.room === askedRoom && !state.toldUnknownHall) {
      // `?room=` naming a hall this event does not have: say so, and show the halls.
      state.toldUnknownHall = true;
      say(t('unknownHall', { room: askedRoom }));
    }
    state.room = null;
    showRoomInAddress(null);
  }
  const chosen = several && all.includes(state.room) ? state.room : null;
  if (chosen && new URLSearchParams(location.search).get('room') !== chosen) showRoomInAddress(chosen);
  $('halls').hidden = !several || chosen !== null;
  $('channels').hidden = several && chosen === null;
  $('other-halls').hidden = !several || chosen === null;
  $('hall-name').textContent = chosen ? roomName(chosen) : '';
  if (!several) return;
  const list = $('hall-list');
  const items = all.map((room) => {
    let el = list.querySelector(`[data-room="${CSS.escape(room)}"]`);
    if (!el) {
      el = document.createElement('button');
      el.type = 'button';
      el.className = 'hall';
      el.dataset.room = room;
      const name = document.createElement('span');
      name.className = 'name';
      const langs = document.createElement('span');
      langs.className = 'state';
      el.append(name, langs);
      el.addEventListener('click', () => chooseHall(room));
    }
    el.querySelector('.name').textContent = roomName(room);
    el.querySelector('.state').textContent = state.channels
      .filter((c) => c.room === room && c.lang !== 'floor')
      .map((c) => c.native)
      .join(' · ');
    return el;
  });
  const same = items.length === list.children.length && items.every((el, i) => list.children[i] === el);
  if (!same) list.replaceChildren(...items);
}

function chooseHall(room) {
  state.room = room;
  stored.set('room', room);
  showRoomInAddress(room);
  renderChannels();
  const first = document.querySelector('#channel-list input:checked') || document.querySelector('#channel-list input');
  if (first) first.focus();
}

// The hall's own address in the address bar, as its QR code has it: a bookmark or a shared
// link opens the same hall.
function showRoomInAddress(room) {
  const q = new URLSearchParams(location.search);
  if (room) q.set('room', room);
  else q.delete('room');
  const search = q.toString();
  history.replaceState(null, '', location.pathname + (search ? '?' + search : ''));
}

$('other-halls').addEventListener('click', () => {
  state.room = null;
  showRoomInAddress(null);
  renderChannels();
  const first = document.querySelector('#hall-list button');
  if (first) first.focus();
});

function renderChannels() {
  renderHalls();
  const list = $('channel-list');
  const existing = new Map([...list.children].map((el) => [el.dataset.id, el]));
  const order = [];
  const several = rooms().length > 1;
  for (const c of state.channels) {
    if (several && c.room !== state.room) {
      // Another hall's channel: not listed, but its change of state is still tracked.
      state.carrying.set(c.id, describe(c));
      continue;
    }
    let el = existing.get(c.id);
    if (!el) {
      el = document.createElement('label');
      el.className = 'channel';
      el.dataset.id = c.id;
      const input = document.createElement('input');
      input.type = 'radio';
      input.name = 'channel';
      input.value = c.id;
      input.addEventListener('change', () => select(c.id));
      // The remembered channel is already checked: touching it again starts the sound.
      input.addEventListener('click', () => {
        if (!state.playing && state.wanted === c.id) select(c.id);
      });
      const text = document.createElement('span');
      text.className = 'text';
      const name = document.createElement('span');
      name.className = 'name';
      const st = document.createElement('span');
      st.className = 'state';
      text.append(name, st);
      el.append(input, text);
    }
    const name = el.querySelector('.name');
    name.textContent = channelName(c);
    // The native name in its own language, so a screen reader pronounces it right.
    if (c.lang !== 'floor') name.lang = c.lang;
    else name.removeAttribute('lang');
    const text = describe(c);
    el.querySelector('.state').textContent = text;
    el.dataset.carrying = c.carrying;
    el.querySelector('input').checked = c.id === state.wanted;
    order.push(el);
    const before = state.carrying.get(c.id);
    if (c.id === state.wanted && before !== undefined && before !== text) {
      say(t('announce', { name: channelName(c), state: text }));
    }
    state.carrying.set(c.id, text);
  }
  // Moving the nodes would take the keyboard focus away from the chosen channel: only when the
  // list itself changed.
  const same = order.length === list.children.length && order.every((el, i) => list.children[i] === el);
  if (!same) list.replaceChildren(...order);
  renderUnder();
}

// --- the connection -------------------------------------------------------------------------

function wsUrl() {
  if (!state.relays) state.relays = [(location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws'];
  return state.relays[state.relay % state.relays.length];
}


// Adds the relays a cluster told that are not known yet.
function learnRelays(list) {
  wsUrl();
  for (const base of Array.isArray(list) ? list : []) {
    const url = typeof base === 'string' ? relayWsUrl(base) : null;
    if (url && !state.relays.includes(url) && state.relays.length < MAX_RELAYS) state.relays.push(url);
  }
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
}

function connect() {
  clearTimeout(state.retry);
  state.retry = null;
  if (state.ws) {
    state.ws.onclose = null;
    state.ws.close();
  }
  state.welcomed = false;
  state.connectingSince = performance.now();
  const ws = new WebSocket(wsUrl());
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  let refusal = null;
  ws.onopen = () => {
    state.lastMessage = performance.now();
    state.pingSentAt = 0;
    const hello = { type: 'hello', role: 'listener', client: 'boothcast-web' };
    if (state.code) hello.secret = state.code;
    if (state.remote) hello.delivery = 'relaxed';
    if (state.playing && state.wanted) {
      hello.channel = state.wanted;
      if (wantsUnder()) hello.floor_under = true;
    }
    state.underFrom = null;
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (e) => {
    state.lastMessage = performance.now();
    if (typeof e.data === 'string') {
      const m = JSON.parse(e.data);
      if (m.type === 'error' && m.fatal) refusal = m;
      onMessage(m);
    } else {
      onFrame(e.data);
    }
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    state.welcomed = false;
    if (refusal && refusal.code === 'unauthorized') {
      askCode(!!state.code);
      return;
    }
    if (refusal && FINAL.has(refusal.code)) {
      if (refusal.code === 'unknown_channel') {
        // The remembered channel is gone from the event: forget it and connect without it.
        state.wanted = null;
        stored.set('channel', null);
        stopPlaying();
        showError(t('unknownChannel'));
        scheduleReconnect();
        return;
      }
      showError(t('refused', { message: refusal.message }));
      return;
    }
    if (!state.lostConnection) {
      state.lostConnection = true;
      say(t('reconnecting'));
    }
    setPageState('reconnecting');
    scheduleReconnect();
  };
}

// The next attempt goes to the next relay, after a wait spread at random.
function scheduleReconnect() {
  clearTimeout(state.retry);
  state.relay = (state.relay + 1) % (state.relays ? state.relays.length : 1);
  let wait;
  if (state.retries === 0) {
    wait = Math.random() * FIRST_RETRY_SPREAD;
  } else {
    wait = state.backoff * (0.5 + Math.random());
    state.backoff = Math.min(BACKOFF_MAX, state.backoff * 2);
  }
  state.retries += 1;
  state.retry = setTimeout(connect, wait);
}

function onMessage(m) {
  switch (m.type) {
    case 'welcome':
      state.welcomed = true;
      state.backoff = BACKOFF_FIRST;
      state.retries = 0;
      learnRelays(m.relays);
      $('event').textContent = m.event;
      state.eventName = m.event;
      state.eventDelayMs = m.listener_delay_ms || 0;
      applyDelay();
      updateExtraHint();
      hideCode();
      if (!$('error').hidden && document.body.dataset.state === 'error') clearError();
      if (state.lostConnection) {
        state.lostConnection = false;
        say(t('reconnected'));
      } else if (!state.playing) {
        // With a language already chosen, its name comes with the channel list, just after.
        if (state.wanted) state.sayReadyWith = true;
        else say(t('ready'));
      }
      setPageState(state.playing ? 'playing' : 'ready');
      break;
    case 'channels':
      state.channels = m.channels;
      if (state.sayReadyWith) {
        state.sayReadyWith = false;
        const c = !state.playing && channelById(state.wanted);
        if (c) say(t('readyChosen', { name: channelName(c) }));
        else if (!state.playing) say(t('ready'));
      }
      // After the line above: a hall asked for that does not exist is said over it.
      renderChannels();
      break;
    case 'subscribed':
      state.subscribed = m.channel;
      state.underFrom = typeof m.floor_under === 'string' ? m.floor_under : null;
      break;
    case 'pong':
      state.rttMs = performance.now() - m.t / 1000;
      break;
    case 'error':
      if (m.fatal) return; // handled when the connection closes
      if (m.code === 'unknown_channel') showError(t('unknownChannel'));
      break;
    default:
      break;
  }
}

function onFrame(data) {
  if (!state.playing || !state.player || state.pausedBySystem) return;
  const h = parseHeader(data);
  const c = channelById(state.wanted);
  if (!h || !c) return;
  // Frames of the previous channel may still arrive right after a switch: never play them.
  if (h.channel === c.index) {
    state.player.push(data);
    return;
  }
  // The floor under the channel: only the one the relay named for it, of the channel's own
  // room (frames of the previous hall's floor may still arrive), and only while wanted.
  const f = state.underFrom ? channelById(state.underFrom) : null;
  if (f && f.room === c.room && h.channel === f.index && wantsUnder()) state.player.pushUnder(data);
}

// Keep-alive and the dead-connection watchdog: dead when nothing at all came back since a ping
// sent long enough ago. (Timers of a hidden tab may run once a minute; comparing with the last
// ping, not with the clock, keeps that from looking like a dead connection.)
setInterval(() => {
  const now = performance.now();
  // A relay that does not answer at all (its machine gone) is given up after DEAD_AFTER too,
  // and the next one is tried.
  if (state.ws && state.ws.readyState === WebSocket.CONNECTING && now - state.connectingSince > DEAD_AFTER) {
    state.ws.close();
    return;
  }
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  if (state.pingSentAt && state.lastMessage < state.pingSentAt && now - state.pingSentAt > DEAD_AFTER) {
    state.ws.close();
    return;
  }
  if (!state.pingSentAt || state.lastMessage >= state.pingSentAt) {
    state.pingSentAt = now;
    send({ type: 'ping', t: Math.round(now * 1000) });
  }
}, PING_EVERY);

// --- access code ----------------------------------------------------------------------------

function askCode(wrong) {
  state.askingCode = true;
  if (wrong) {
    state.code = '';
    sessionStorage.removeItem('boothcast.code');
  }
  $('code-message').textContent = wrong ? t('codeWrong') : t('codeNeeded');
  $('code-form').hidden = false;
  setPageState('code');
  say(wrong ? t('codeWrong') : t('codeNeeded'));
  $('code').value = '';
  $('code').focus();
}

function hideCode() {
  state.askingCode = false;
  $('code-form').hidden = true;
}

$('code-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const code = $('code').value.trim();
  if (!code) return;
  state.code = code;
  sessionStorage.setItem('boothcast.code', code);
  say(t('connecting'));
  state.backoff = BACKOFF_FIRST;
  state.retries = 0;
  connect();
});

// --- playing --------------------------------------------------------------------------------

async function ensurePlayer() {
  if (state.player) return state.player;
  askPlaybackSession();
  state.starting ??= (async () => {
    const delayMs = effectiveDelay();
    let player;
    try {
      player = await createPlayer({ fallback: FALLBACK, delayMs });
    } catch (e) {
      if (FALLBACK) throw e;
      player = await createPlayer({ fallback: true, delayMs });
    }
    player.setVolume(Number($('volume').value));
    player.setUnderLevel(state.underDb);
    $('path').textContent = player.path === 'fallback' ? `(${t('compat')})` : '';
    player.context.addEventListener('statechange', onAudioState);
    state.player = player;
    return player;
  })();
  try {
    return await state.starting;
  } finally {
    state.starting = null;
  }
}

async function startPlaying() {
  if (!state.wanted) {
    say(t('chooseLanguage'));
    // The halls first where no hall is chosen yet.
    const first = $('channels').hidden ? document.querySelector('#hall-list button') : document.querySelector('#channel-list input');
    if (first) first.focus();
    return;
  }
  let player;
  try {
    player = await ensurePlayer();
    await player.resume();
  } catch (e) {
    showError(t('noAudio'));
    return;
  }
  state.playing = true;
  $('play').dataset.playing = 'true';
  $('play').textContent = t('stop');
  subscribe();
}

function subscribe() {
  const c = channelById(state.wanted);
  if (state.player) state.player.reset();
  state.switchedAt = performance.now();
  // Choosing a channel is a tap: it also brings back sound the system had stopped.
  if (state.pausedBySystem) {
    resumeAudio();
    say(t('pausedByPhone'));
  } else {
    if (c) say(t('listening', { name: channelName(c) }));
    setPageState('playing');
  }
  updateMediaSession();
  if (state.player) state.player.setUnder(wantsUnder());
  if (state.welcomed) send(subscribeMessage());
  else if (!state.ws) connect();
}

function subscribeMessage() {
  const m = { type: 'subscribe', channel: state.wanted };
  if (wantsUnder()) m.floor_under = true;
  return m;
}

function stopPlaying() {
  const was = state.playing;
  state.playing = false;
  $('play').dataset.playing = 'false';
  $('play').textContent = t('listen');
  if (state.player) {
    state.player.reset();
    state.player.setUnder(false);
  }
  showPaused(false);
  updateMediaSession();
  if (was) {
    send({ type: 'unsubscribe' });
    say(t('stopped'));
    if (state.welcomed) setPageState('ready');
  }
}

function select(id) {
  const c = channelById(id);
  if (!c) return;
  state.wanted = id;
  stored.set('channel', id);
  // The hall is remembered with the language, however the page was opened (a hall's own
  // address or QR code sets `state.room` without storing it).
  state.room = c.room;
  stored.set('room', c.room);
  if (rooms().length > 1) showRoomInAddress(c.room);
  if (document.body.dataset.state === 'error') clearError();
  renderChannels();
  // Choosing a language is the gesture that starts the sound.
  if (state.playing) subscribe();
  else startPlaying();
}

$('play').addEventListener('click', () => {
  if (state.playing) stopPlaying();
  else startPlaying();
});

// --- the phone: audio session, interruptions, lock screen ------------------------------------

// On an iPhone, Web Audio follows the ring/silent switch unless the page asks for a playback
// session (Safari 16.4 and later); most delegates keep their phone on silent.
function askPlaybackSession() {
  try {
    if (navigator.audioSession && navigator.audioSession.type !== 'playback') navigator.audioSession.type = 'playback';
  } catch {}
}

// The audio context's state changed. The page itself never suspends it, so `suspended` or
// `interrupted` while listening means the system stopped the sound.
function onAudioState() {
  const p = state.player;
  if (!p || !state.playing) return;
  const st = p.context.state;
  if (st === 'running') {
    if (state.pausedBySystem) {
      // Back at live: whatever was queued before the pause is stale.
      showPaused(false);
      p.reset();
      const c = channelById(state.wanted);
      if (c) say(t('listening', { name: channelName(c) }));
      setPageState('playing');
    }
  } else if (st === 'suspended' || st === 'interrupted') {
    showPaused(true);
    say(t('pausedByPhone'));
    setPageState('paused');
  }
  updateMediaSession();
}

function showPaused(on) {
  state.pausedBySystem = on;
  $('paused').hidden = !on;
}

// Resumes the audio context; only works from a user's gesture on most phones.
function resumeAudio() {
  const p = state.player;
  if (!p || p.context.state === 'running' || p.context.state === 'closed') return;
  p.resume().catch(() => {});
}

// Any tap or key brings the sound back.
for (const type of ['click', 'touchend', 'keydown']) {
  document.addEventListener(
    type,
    () => {
      if (state.playing && state.pausedBySystem) resumeAudio();
    },
    { capture: true },
  );
}

// Back in front: a context the system suspended meanwhile may come back by itself; if it does
// not, the page says so and waits for a tap.
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState !== 'visible' || !state.playing || !state.player) return;
  resumeAudio();
  onAudioState();
});

// The lock screen and the system's media controls: the channel and the event, play and stop.
function updateMediaSession() {
  const ms = navigator.mediaSession;
  if (!ms) return;
  try {
    const c = channelById(state.wanted);
    if (state.playing && c && typeof MediaMetadata === 'function') {
      ms.metadata = new MediaMetadata({ title: channelName(c), artist: state.eventName, album: roomName(c.room) });
    }
    ms.playbackState = !state.playing ? 'none' : state.pausedBySystem ? 'paused' : 'playing';
  } catch {}
}

if (navigator.mediaSession) {
  const handlers = {
    play: () => (state.playing ? resumeAudio() : startPlaying()),
    pause: () => stopPlaying(),
    stop: () => stopPlaying(),
  };
  for (const [action, fn] of Object.entries(handlers)) {
    try {
      navigator.mediaSession.setActionHandler(action, fn);
    } catch {}
  }
}

// --- volume and delay -----------------------------------------------------------------------

const savedVolume = Number(stored.get('volume'));
if (stored.get('volume') !== null && Number.isFinite(savedVolume)) $('volume').value = String(savedVolume);
$('volume').addEventListener('input', () => {
  const v = Number($('volume').value);
  stored.set('volume', String(v));
  if (state.player) state.player.setVolume(v);
});

function userDelay() {
  const v = stored.get('delay');
  return v === null || v === '' ? null : Number(v);
}

// The relay writes to a listener of the relaxed class every 200 ms (docs/PROTOCOL.md, hello's
// `delivery`): frames come ten at a time, the first of each write up to 200 ms after its time.
// Played this much later, every frame of a write is in time.
const REMOTE_EXTRA_MS = 220;

function effectiveDelay() {
  const own = userDelay();
  const base = Number.isFinite(own) && own !== null ? own : state.eventDelayMs;
  return base + (state.remote ? REMOTE_EXTRA_MS : 0);
}

function applyDelay() {
  if (state.player) state.player.setDelay(effectiveDelay());
}

function updateExtraHint() {
  $('extra-hint').textContent = t('extraDelayHint', { n: state.eventDelayMs });
  $('extra').placeholder = String(state.eventDelayMs);
}

if (userDelay() !== null) $('extra').value = String(userDelay());
$('extra').addEventListener('change', () => {
  const raw = $('extra').value.trim();
  const v = Number(raw);
  stored.set('delay', raw === '' || !Number.isFinite(v) ? null : String(Math.min(60000, Math.max(0, v))));
  applyDelay();
});

// The delay shown: from the relay to the ear, as far as the page can tell (half the round trip
// to the relay, then the page's own buffering and the audio output).
setInterval(() => {
  const out = $('delay');
  const s = state.player && state.playing ? state.player.stats() : null;
  const text = s && s.delayMs !== null ? t('ms', { n: Math.round(s.delayMs + (state.rttMs || 0) / 2) }) : t('delayUnknown');
  if (out.textContent !== text) out.textContent = text;
}, 500);

// --- listening from outside the hall ---------------------------------------------------------

$('remote').checked = state.remote;
$('remote').addEventListener('change', () => {
  state.remote = $('remote').checked;
  stored.set('remote', state.remote ? '1' : '0');
  applyDelay();
  // The delivery class is asked for in hello: a new connection asks again, and the channel
  // being heard comes back on it.
  if (state.ws) connect();
});

// --- the original underneath ----------------------------------------------------------------

// Whether the floor is wanted under the chosen channel: never under a floor itself.
function wantsUnder() {
  return state.under && !!state.wanted && !isFloor(state.wanted);
}

function isFloor(id) {
  const c = channelById(id);
  return c ? c.lang === 'floor' : id.endsWith('/floor');
}

// A level in dB as shown: a true minus sign, the number kept left to right inside right-to-left
// text.
function dbText(db) {
  const n = db < 0 ? '\u2212' + Math.abs(db) : String(db);
  return t('db', { n: '\u2066' + n + '\u2069' });
}

// The option is hidden while the chosen channel is a floor; its level only moves while it is on.
function renderUnder() {
  const floor = !!state.wanted && isFloor(state.wanted);
  $('under-box').hidden = floor;
  $('under').disabled = floor;
  $('under').checked = state.under;
  const level = $('under-level');
  level.disabled = floor || !state.under;
  if (Number(level.value) !== state.underDb) level.value = String(state.underDb);
  const text = dbText(state.underDb);
  level.setAttribute('aria-valuetext', text);
  if ($('under-level-value').textContent !== text) $('under-level-value').textContent = text;
}

$('under').addEventListener('change', () => {
  state.under = $('under').checked;
  stored.set('floorUnder', state.under ? '1' : '0');
  renderUnder();
  if (!state.playing) return;
  // Off: the player drops what it queued of the floor at once. Either way the same channel is
  // subscribed again with or without the floor; its own frames go on undisturbed.
  if (state.player) state.player.setUnder(wantsUnder());
  if (state.welcomed) send(subscribeMessage());
});

$('under-level').addEventListener('input', () => {
  const v = Number($('under-level').value);
  if (!Number.isFinite(v)) return;
  state.underDb = Math.min(UNDER_MAX_DB, Math.max(UNDER_MIN_DB, Math.round(v)));
  stored.set('floorUnderDb', String(state.underDb));
  renderUnder();
  if (state.player) state.player.setUnderLevel(state.underDb);
});

// --- start ----------------------------------------------------------------------------------

if (pageInfo && Array.isArray(pageInfo.rooms)) {
  for (const r of pageInfo.rooms) state.roomNames.set(r.id, r.name);
}
translate();
if (typeof AudioContext !== 'function') showError(t('noAudio'));
say(t('connecting'));
connect();
