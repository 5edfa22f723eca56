// The sound engineer's console: every channel's state, level meters, listeners, the senders'
// connection health, monitoring, force-mute, recording, the event log and, in a cluster of
// relays, its nodes, over one engineer WebSocket (docs/PROTOCOL.md, role "engineer").

import { relayWsUrl } from './relays.js';
const SECRET_KEY = 'boothcast.engineer-secret';
// The relay keeps the last 200 log entries; the page shows as many.
const LOG_LIMIT = 200;
// Meters span -60..0 dBFS: speech below -60 dBFS is inaudible in a hall.
const METER_FLOOR_DB = 60;
// A peak stays marked this long, then falls back to the current peak.
const PEAK_HOLD_MS = 1500;
// Reconnect back-off, as the boothcast clients: back quickly after a blip, without hammering.
const BACKOFF_FIRST_MS = 200;
const BACKOFF_MAX_MS = 5000;
const PING_EVERY_MS = 2000;
const HEADER_LEN = 28;
// A relay that says nothing for this long (it sends levels ten times a second) is presumed gone.
const SILENT_RELAY_MS = 6000;

const $ = (id) => document.getElementById(id);
const el = {
  event: $('event'), conn: $('conn'), recBtn: $('rec-btn'), recState: $('rec-state'), rec: $('rec'),
  recHere: $('rec-here'), clusterSection: $('cluster-section'), cluster: $('cluster').tBodies[0],
  monState: $('mon-state'), volume: $('volume'), signOut: $('sign-out'), login: $('login'),
  secret: $('secret'), refusal: $('refusal'), desk: $('desk'), channels: $('channels').tBodies[0],
  healthTable: $('health'), health: $('health').tBodies[0], log: $('log'), notice: $('notice'),
};

// What the page knows; every relay message carries complete state of its kind.
const state = {
  channels: [],          // channel objects from `channels`, in index order
  rows: new Map(),       // channel id -> the row's elements
  listeners: new Map(),  // channel id -> count
  holds: new Map(),      // channel id -> { db, until } peak hold
  monitored: null,       // channel id being monitored, or null
  recording: { active: false },
  nodes: null,           // the cluster's nodes from `cluster` (null: a relay alone)
  roomNames: new Map(),  // room id -> the hall's name (from /join)
};

// The halls' names, for grouping the channels by hall; the ids stand in until they come.
fetch('join')
  .then((r) => (r.ok ? r.json() : null))
  .then((info) => {
    if (!info || !Array.isArray(info.rooms)) return;
    for (const r of info.rooms) state.roomNames.set(r.id, r.name);
    if (state.channels.length) {
      buildRows(state.channels);
      renderChannels(state.channels);
    }
  })
  .catch(() => {});

// Counters the browser tests read; also handy in the devtools console on show day.
const stats = {
  levels: 0,             // `levels` messages applied
  channels: 0,           // `channels` messages applied
  frames: 0,             // monitored frames handed to the player
  connects: 0,
  cluster: 0,            // `cluster` messages applied
  shownAt: new Map(),    // channel id -> Date.now() when its live console was last rendered
};
window.boothcast = { state, stats };

let ws = null;
let backoff = BACKOFF_FIRST_MS;
let retryTimer = null;
let pingTimer = null;
let lastMessageAt = 0;
let freshLog = true;
let player = null;
let playerLoading = null;

// ---------------------------------------------------------------- connection

function secret() {
  return sessionStorage.getItem(SECRET_KEY);
}

function setConn(st, text) {
  el.conn.dataset.state = st;
  el.conn.textContent = text;
  document.body.dataset.conn = st;
}

// The relays to try, this page's own first; in a cluster `welcome` adds the other nodes, and a
// lost connection tries the next one (a dead node's console moves to a live one).
const MAX_RELAYS = 16;
const relays = [(location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws'];
let relayAt = 0;
window.boothcast.relays = relays;


function learnRelays(list) {
  for (const base of Array.isArray(list) ? list : []) {
    const url = typeof base === 'string' ? relayWsUrl(base) : null;
    if (url && !relays.includes(url) && relays.length < MAX_RELAYS) relays.push(url);
  }
}

function connect() {
  clearTimeout(retryTimer);
  const s = secret();
  if (!s) return showLogin('');
  setConn('connecting', 'connecting…');
  const sock = new WebSocket(relays[relayAt % relays.length]);
  sock.binaryType = 'arraybuffer';
  ws = sock;
  let refused = false;
  sock.onopen = () => {
    const hello = { type: 'hello', role: 'engineer', secret: s, client: 'boothcast console' };
    if (state.monitored) hello.channel = state.monitored;
    sock.send(JSON.stringify(hello));
  };
  sock.onmessage = (e) => {
    if (sock !== ws) return;
    lastMessageAt = performance.now();
    if (typeof e.data === 'string') {
      const m = JSON.parse(e.data);
      if (m.type === 'error' && m.fatal && m.code === 'unauthorized') refused = true;
      handle(m);
    } else {
      frame(e.data);
    }
  };
  sock.onclose = (e) => {
    if (sock !== ws) return;
    ws = null;
    clearInterval(pingTimer);
    markStale(true);
    if (refused || e.reason === 'unauthorized') return;
    // The next relay; back to the first try's wait when there is another one to try.
    relayAt = (relayAt + 1) % relays.length;
    const wait = relays.length > 1 && relayAt !== 0 ? BACKOFF_FIRST_MS : backoff;
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    setConn('reconnecting', `connection lost · retrying in ${(wait / 1000).toFixed(1)} s`);
    retryTimer = setTimeout(connect, wait);
  };
}

function send(m) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(m));
    return true;
  }
  notice('not connected to the relay: the command was not sent');
  return false;
}

function pinger() {
  clearInterval(pingTimer);
  pingTimer = setInterval(() => {
    if (performance.now() - lastMessageAt > SILENT_RELAY_MS && ws) {
      // A dead Wi-Fi leaves the socket open for minutes; close it so the reconnect starts.
      ws.close();
      return;
    }
    send({ type: 'ping', t: Date.now() });
  }, PING_EVERY_MS);
}

// ---------------------------------------------------------------- messages

function handle(m) {
  switch (m.type) {
    case 'welcome':
      backoff = BACKOFF_FIRST_MS;
      learnRelays(m.relays);
      freshLog = true;
      stats.connects += 1;
      el.event.textContent = m.event;
      document.title = `${m.event} · engineer`;
      setConn('connected', 'connected');
      showDesk();
      pinger();
      // What was buffered before the break is stale: play the monitored channel from live.
      if (player) player.reset();
      break;
    case 'channels': renderChannels(m.channels); break;
    case 'audience': renderAudience(m.listeners); break;
    case 'levels': renderLevels(m.levels); break;
    case 'health': renderHealth(m.senders); break;
    case 'recording': renderRecording(m); break;
    case 'cluster':
      // Nodes that joined after `welcome` are learnt here.
      learnRelays((m.nodes || []).filter((n) => n.health !== 'silent').map((n) => n.url));
      renderCluster(m.nodes);
      break;
    case 'log': renderLog(m.entries); break;
    case 'subscribed': renderMonitor(m.channel); break;
    case 'pong': setConn('connected', `connected · ${Math.max(0, Date.now() - m.t)} ms`); break;
    case 'error': refusal(m); break;
    default: break;
  }
}

function refusal(m) {
  if (m.code === 'unauthorized') {
    sessionStorage.removeItem(SECRET_KEY);
    setConn('refused', 'refused');
    showLogin(`The relay refused this secret: ${m.message}.`);
    return;
  }
  const what = m.fatal ? 'The relay closed the connection' : 'Refused';
  notice(`${what}: ${m.message} (${m.code})`);
}

// ---------------------------------------------------------------- login

function showLogin(why) {
  el.desk.hidden = true;
  el.signOut.hidden = true;
  el.login.hidden = false;
  el.refusal.textContent = why;
  el.secret.value = '';
  el.secret.focus();
  if (!why) setConn('idle', 'not connected');
}

function showDesk() {
  el.login.hidden = true;
  el.desk.hidden = false;
  el.signOut.hidden = false;
  el.refusal.textContent = '';
  markStale(false);
}

el.login.addEventListener('submit', (e) => {
  e.preventDefault();
  const s = el.secret.value;
  if (!s) return;
  sessionStorage.setItem(SECRET_KEY, s);
  el.refusal.textContent = '';
  backoff = BACKOFF_FIRST_MS;
  if (ws) { const old = ws; ws = null; old.close(); }
  connect();
});

el.signOut.addEventListener('click', () => {
  sessionStorage.removeItem(SECRET_KEY);
  clearTimeout(retryTimer);
  if (ws) { const old = ws; ws = null; old.close(); }
  stopMonitor();
  showLogin('');
});

function markStale(stale) {
  document.body.classList.toggle('stale', stale);
}

// ---------------------------------------------------------------- channels

const CARRYING = { floor: 'floor', interpreter: 'interpreter', relay: 'relay', silence: 'silence' };

function channelName(id) {
  const c = state.channels.find((x) => x.id === id);
  return c ? c.name : id;
}

function renderChannels(channels) {
  stats.channels += 1;
  const ids = channels.map((c) => c.id).join(' ');
  if (ids !== state.channels.map((c) => c.id).join(' ')) buildRows(channels);
  state.channels = channels;
  const now = Date.now();
  for (const c of channels) {
    const r = state.rows.get(c.id);
    const floorChannel = c.lang === 'floor';
    let carries = CARRYING[c.carrying] || c.carrying;
    if (c.carrying === 'floor' && !floorChannel) carries = 'floor (auto)';
    if (c.carrying === 'relay' && c.relay_chain) {
      carries = 'relay via ' + c.relay_chain.slice(0, -1).map(channelName).join(' ← ');
    }
    r.carries.textContent = carries;
    r.carries.title = c.relay_chain ? 'sound path: ' + c.relay_chain.join(' ← ') : '';
    r.row.dataset.carrying = c.carrying;
    const live = c.live ? `${c.live.booth}/${c.live.console}` : '';
    if (r.row.dataset.live !== live) stats.shownAt.set(c.id, now);
    r.row.dataset.live = live;
    r.row.dataset.cough = c.live && c.live.cough ? 'true' : 'false';
    r.live.replaceChildren();
    if (c.live) {
      const who = document.createElement('span');
      who.textContent = `booth ${c.live.booth} · console ${c.live.console}`;
      r.live.append(who);
      if (c.live.cough) {
        const cough = document.createElement('span');
        cough.className = 'badge cough';
        cough.textContent = 'COUGH';
        r.live.append(' ', cough);
      }
    } else {
      r.live.textContent = floorChannel ? 'floor feed' : '—';
    }
    r.mute.disabled = !c.live;
    r.mute.title = c.live ? `take booth ${c.live.booth} console ${c.live.console} off air` : 'no console is live';
    r.mute.setAttribute('aria-label', `force-mute ${c.name}`);
  }
}

function buildRows(channels) {
  state.rows.clear();
  el.channels.replaceChildren();
  // With several halls, each hall's channels under a heading row of its name.
  const halls = new Set(channels.map((c) => c.room)).size > 1;
  let room = null;
  channels.forEach((c, i) => {
    if (halls && c.room !== room) {
      room = c.room;
      const head = el.channels.insertRow();
      head.className = 'hall';
      head.dataset.room = room;
      const th = document.createElement('th');
      th.colSpan = 8;
      th.scope = 'colgroup';
      th.textContent = state.roomNames.get(room) || room;
      head.append(th);
    }
    const row = el.channels.insertRow();
    row.dataset.channel = c.id;
    const cell = (cls) => { const td = row.insertCell(); if (cls) td.className = cls; return td; };
    cell('key').textContent = i < 9 ? String(i + 1) : '';
    const name = cell('name');
    const strong = document.createElement('strong');
    strong.textContent = c.name;
    const id = document.createElement('span');
    id.className = 'id';
    id.textContent = c.native !== c.name ? `${c.native} · ${c.id}` : c.id;
    name.append(strong, id);
    const carries = cell('carries');
    const live = cell('live');
    const meterCell = cell('meter-cell');
    const meter = document.createElement('div');
    meter.className = 'meter';
    meter.setAttribute('role', 'meter');
    meter.setAttribute('aria-label', `${c.name} level`);
    meter.setAttribute('aria-valuemin', String(-METER_FLOOR_DB));
    meter.setAttribute('aria-valuemax', '0');
    const peak = document.createElement('div');
    peak.className = 'bar peak';
    const rms = document.createElement('div');
    rms.className = 'bar rms';
    const hold = document.createElement('div');
    hold.className = 'hold';
    meter.append(peak, rms, hold);
    const db = document.createElement('span');
    db.className = 'db';
    meterCell.append(meter, db);
    const listeners = cell('num listeners');
    listeners.textContent = String(state.listeners.get(c.id) ?? 0);
    const mon = document.createElement('button');
    mon.type = 'button';
    mon.className = 'monitor';
    mon.textContent = 'Listen';
    mon.setAttribute('aria-pressed', 'false');
    mon.setAttribute('aria-label', `monitor ${c.name}`);
    mon.addEventListener('click', () => toggleMonitor(c.id));
    cell().append(mon);
    const mute = document.createElement('button');
    mute.type = 'button';
    mute.className = 'force-mute';
    mute.textContent = 'Mute';
    mute.disabled = true;
    mute.addEventListener('click', () => forceMute(c.id));
    cell().append(mute);
    state.rows.set(c.id, { row, carries, live, meter, peak, rms, hold, db, listeners, mon, mute });
    paintMeter(state.rows.get(c.id), 127, 127);
  });
  renderMonitor(state.monitored);
}

function renderAudience(list) {
  for (const [id, n] of list) {
    state.listeners.set(id, n);
    const r = state.rows.get(id);
    if (r) r.listeners.textContent = String(n);
  }
  titleListeners();
}

// In a cluster the count is the sum over the nodes; each node's share is in the tooltip.
function titleListeners() {
  for (const [id, r] of state.rows) {
    r.listeners.title = state.nodes
      ? 'per relay: ' + state.nodes
        .filter((n) => n.health !== 'silent')
        .map((n) => `${n.node} ${(n.listeners.find(([c]) => c === id) || [id, 0])[1]}`)
        .join(' · ')
      : '';
  }
}

function forceMute(id) {
  const c = state.channels.find((x) => x.id === id);
  if (!c || !c.live) return;
  send({ type: 'force_mute', booth: c.live.booth, console: c.live.console });
}

// ---------------------------------------------------------------- meters

// -dBFS byte -> fraction of the meter's width.
function fraction(byte) {
  if (byte === 255 || byte >= METER_FLOOR_DB) return 0;
  return 1 - byte / METER_FLOOR_DB;
}

function clip(node, f) {
  node.style.clipPath = `inset(0 ${((1 - f) * 100).toFixed(1)}% 0 0)`;
}

function paintMeter(r, rmsByte, peakByte) {
  clip(r.rms, fraction(rmsByte));
  clip(r.peak, fraction(peakByte));
  const id = r.row.dataset.channel;
  const now = performance.now();
  const held = state.holds.get(id);
  let holdByte = peakByte;
  if (held && now < held.until && held.byte <= peakByte) holdByte = held.byte;
  else state.holds.set(id, { byte: peakByte, until: now + PEAK_HOLD_MS });
  const f = fraction(holdByte);
  r.hold.style.left = `calc(${(f * 100).toFixed(1)}% - 2px)`;
  r.hold.hidden = f === 0;
  r.hold.classList.toggle('over', holdByte <= 1);
  const silent = rmsByte >= 127;
  r.db.textContent = silent ? '—' : `−${rmsByte}`;
  r.meter.setAttribute('aria-valuenow', silent ? String(-METER_FLOOR_DB) : String(-rmsByte));
  r.row.dataset.signal = silent ? 'false' : 'true';
}

function renderLevels(levels) {
  stats.levels += 1;
  for (const [id, rms, peak] of levels) {
    const r = state.rows.get(id);
    if (r) paintMeter(r, rms, peak);
  }
}

// ---------------------------------------------------------------- health

function fixed(v, digits) {
  return v === null || v === undefined ? '—' : Number(v).toFixed(digits);
}

// A sender sends a frame every 2.5 to 60 ms: half a second without one is a stall.
const STALL_MS = 500;

function renderHealth(senders) {
  const liveOn = new Map(state.channels.filter((c) => c.live)
    .map((c) => [`${c.live.booth}/${c.live.console}`, c.lang]));
  // In a cluster each sender says which relay it is connected to (and which measured it).
  const clustered = senders.some((s) => s.node);
  el.healthTable.classList.toggle('clustered', clustered);
  const rows = senders.map((s) => {
    const tr = document.createElement('tr');
    tr.dataset.who = s.who;
    if (s.node) tr.dataset.node = s.node;
    const live = liveOn.get(s.who);
    // A live console (or the floor) whose frames stopped: the channel carries nothing until
    // the relay gives up on the connection (3 s) and the floor comes back after the hold.
    const stalled = (live || s.who.startsWith('floor')) && s.silent_ms > STALL_MS;
    const name = live ? `${s.who} · live ${live}` : s.who;
    const cells = [
      stalled ? `${name} · NO FRAMES ${(s.silent_ms / 1000).toFixed(1)} s` : name, s.node || '',
      fixed(s.rtt_ms, 1), fixed(s.jitter_ms, 1), String(s.frames), String(s.lost),
      String(s.reconnects), s.overruns === undefined ? '—' : String(s.overruns),
    ];
    cells.forEach((text, i) => {
      const td = tr.insertCell();
      td.textContent = text;
      if (i === 1) td.className = 'node-col';
      else if (i > 1) td.className = 'num';
    });
    // Draw the eye to what needs attention: frames stopped, a slow link, losses, a flapping
    // connection.
    if (stalled) {
      tr.cells[0].classList.add('warn');
      tr.dataset.stalled = 'true';
    }
    if (s.rtt_ms > 100 || s.jitter_ms > 20) tr.cells[2].classList.add('warn');
    if (s.lost > 0) tr.cells[5].classList.add('warn');
    if (s.reconnects > 0) tr.cells[6].classList.add('warn');
    if (s.overruns > 0) tr.cells[7].classList.add('warn');
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    const td = tr.insertCell();
    td.colSpan = 8;
    td.className = 'empty';
    td.textContent = 'no booth console or floor feed connected';
    rows.push(tr);
  }
  el.health.replaceChildren(...rows);
}

// ---------------------------------------------------------------- recording

function renderRecording(m) {
  const last = m.dir || (state.recording.active ? state.recording.dir : state.recording.last);
  state.recording = { ...m, last };
  el.rec.dataset.active = m.active ? 'true' : 'false';
  el.recBtn.disabled = false;
  el.recBtn.textContent = m.active ? 'Stop recording' : 'Start recording';
  // The session directory's name is what tells sessions apart; the whole path is in the tooltip.
  const base = (dir) => dir.split(/[\\/]/).pop();
  // In a cluster, the node that records: its disk holds the files.
  const on = m.node ? ` on ${m.node}` : '';
  // A node that took the recording over by itself, after the node that recorded was lost.
  const taken = m.active && m.taken_over_from ? ` · taken over from ${m.taken_over_from}` : '';
  el.recState.textContent = m.active
    ? `● REC${on} ${base(m.dir)}${taken}`
    : (last ? `stopped · ${base(last)}` : 'not recording');
  el.recState.title = m.active
    ? (m.node ? `node ${m.node}: ${m.dir}` : m.dir)
      + (taken ? ` (taken over after node ${m.taken_over_from} was lost)` : '')
    : (last || '');
  renderRecordHere();
}

// "Record here": in a cluster, while another node records, moves the recording to this one.
function renderRecordHere() {
  const here = state.nodes && state.nodes.find((n) => n.here);
  el.recHere.hidden = !(here && state.recording.active && state.recording.node
    && state.recording.node !== here.node);
  if (here) el.recHere.textContent = `Record on ${here.node}`;
}

el.recBtn.addEventListener('click', () => {
  send({ type: 'record', start: !state.recording.active });
});

el.recHere.addEventListener('click', () => {
  send({ type: 'record', start: true });
});

// ---------------------------------------------------------------- cluster

const HEALTH = {
  deciding: 'deciding', following: 'following', isolated: 'isolated (no NATS)', silent: 'silent',
};

function shortChannel(id) {
  // One hall: the language code says it; several: the whole id.
  const rooms = new Set(state.channels.map((c) => c.room));
  return rooms.size > 1 ? id : id.split('/').pop();
}

function renderCluster(nodes) {
  stats.cluster += 1;
  state.nodes = nodes;
  el.clusterSection.hidden = false;
  const rows = nodes.map((n) => {
    const tr = document.createElement('tr');
    tr.dataset.node = n.node;
    tr.dataset.health = n.health;
    tr.dataset.connected = n.connected ? 'true' : 'false';
    tr.classList.toggle('here', n.here);
    const cell = (cls) => { const td = tr.insertCell(); if (cls) td.className = cls; return td; };
    const name = cell('node');
    name.textContent = n.node;
    if (n.here) {
      const here = document.createElement('span');
      here.className = 'here';
      here.textContent = '(this relay)';
      name.append(here);
    }
    if (n.recording) {
      const rec = document.createElement('span');
      rec.className = 'badge rec';
      rec.textContent = 'REC';
      name.append(rec);
    }
    const st = cell('state');
    st.textContent = HEALTH[n.health] || n.health;
    if (!n.connected && n.health !== 'silent' && n.health !== 'isolated') {
      st.textContent += ' · NATS lost';
      st.classList.add('warn');
    }
    cell('num heard').textContent = n.here ? 'now' : `${(n.heard_ms / 1000).toFixed(1)} s ago`;
    cell('url').textContent = n.url;
    const total = n.listeners.reduce((sum, [, count]) => sum + count, 0);
    cell('num listeners').textContent = n.health === 'silent' ? '—' : String(total);
    cell('per').textContent = n.listeners.filter(([, count]) => count > 0)
      .map(([id, count]) => `${shortChannel(id)} ${count}`).join(' · ');
    return tr;
  });
  el.cluster.replaceChildren(...rows);
  titleListeners();
  renderRecordHere();
}

// ---------------------------------------------------------------- log

function time(t) {
  const d = new Date(t);
  return d.toLocaleTimeString('en-GB', { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0').slice(0, 1);
}

function renderLog(entries) {
  if (freshLog) {
    // The relay sends its recent history on every (re)connect: it replaces what we had.
    el.log.replaceChildren();
    freshLog = false;
  }
  const items = entries.map((e) => {
    const li = document.createElement('li');
    li.dataset.kind = e.kind;
    const t = document.createElement('time');
    t.dateTime = new Date(e.t).toISOString();
    t.textContent = time(e.t);
    const kind = document.createElement('span');
    kind.className = 'kind';
    kind.textContent = e.kind.replace('_', '-');
    const text = document.createElement('span');
    if (e.node) {
      // In a cluster: the relay the entry is about (the sender's, else the one that logged it).
      li.dataset.node = e.node;
      const node = document.createElement('span');
      node.className = 'node';
      node.textContent = e.node;
      node.title = `relay ${e.node}`;
      text.append(node);
    }
    text.append(e.text);
    li.append(t, kind, text);
    return li;
  });
  el.log.prepend(...items.reverse());
  while (el.log.children.length > LOG_LIMIT) el.log.lastElementChild.remove();
}

// ---------------------------------------------------------------- monitoring

async function loadPlayer() {
  if (player) return player;
  if (!playerLoading) {
    playerLoading = import('./player.js')
      .then((mod) => mod.createPlayer())
      .then((p) => {
        player = p;
        player.setVolume(Number(el.volume.value));
        window.boothcast.player = p;
        return p;
      })
      .catch((err) => {
        playerLoading = null;
        throw err;
      });
  }
  return playerLoading;
}

async function toggleMonitor(id) {
  if (state.monitored === id) return stopMonitor();
  try {
    const p = await loadPlayer();
    await p.resume();
    p.reset();
  } catch (err) {
    notice(`monitoring is not available in this browser: ${err.message}`);
    return;
  }
  state.monitored = id;
  renderMonitor(id);
  send({ type: 'subscribe', channel: id });
}

function stopMonitor() {
  if (!state.monitored) return;
  state.monitored = null;
  renderMonitor(null);
  if (player) player.reset();
  send({ type: 'unsubscribe' });
}

function renderMonitor(id) {
  for (const [cid, r] of state.rows) {
    const on = cid === id;
    r.mon.setAttribute('aria-pressed', on ? 'true' : 'false');
    r.mon.textContent = on ? 'Listening' : 'Listen';
    r.row.classList.toggle('monitored', on);
  }
  el.monState.textContent = id ? `monitor: ${channelName(id)}` : 'monitor off';
}

function frame(buf) {
  if (!player || !state.monitored || buf.byteLength <= HEADER_LEN) return;
  // Right after a switch, frames of the previous channel may still be in flight: the header
  // says which channel a frame belongs to.
  const index = new DataView(buf).getUint16(2);
  const c = state.channels.find((x) => x.id === state.monitored);
  if (!c || c.index !== index) return;
  stats.frames += 1;
  player.push(buf);
}

el.volume.addEventListener('input', () => {
  if (player) player.setVolume(Number(el.volume.value));
});

// ---------------------------------------------------------------- notices and keys

let noticeTimer = null;
function notice(text) {
  el.notice.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.notice.textContent = ''; }, 8000);
}

document.addEventListener('keydown', (e) => {
  if (el.desk.hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target instanceof HTMLInputElement && e.target.type !== 'range') return;
  if (e.key >= '1' && e.key <= '9') {
    const c = state.channels[Number(e.key) - 1];
    if (c) { toggleMonitor(c.id); e.preventDefault(); }
  } else if (e.key === '0' || e.key === 'Escape') {
    stopMonitor();
    e.preventDefault();
  }
});

connect();
