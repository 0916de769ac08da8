// The page: wires VoiceClient events to the DOM and exposes window.voicebridge for tests.

import { VoiceClient } from './client.js';

const $ = (id) => document.getElementById(id);

const STATUS_HINTS = {
  idle: 'Press Start and allow the microphone.',
  connecting: 'Connecting to the server…',
  reconnecting: 'Connection lost, reconnecting…',
  ready: 'Ready. Speak whenever you like.',
  listening: 'Listening. Go ahead and speak.',
  processing: 'Got it, working on an answer…',
  agent_speaking: 'The agent is speaking. Talk over it to interrupt.',
  shutting_down: 'The server is restarting; this page will reconnect.',
  ending: 'The session is ending.',
  ended: 'The session has ended.',
  disconnected: 'Session ended. Press Start for a new one.',
};

const client = new VoiceClient();
const ui = {
  status: $('status'),
  pill: $('status-pill'),
  hint: $('status-hint'),
  start: $('start'),
  stop: $('stop'),
  errors: $('errors'),
  transcript: $('transcript'),
  empty: $('transcript-empty'),
  meterFill: $('meter-fill'),
  meterDb: $('meter-db'),
  banner: $('emulator-banner'),
  backend: $('backend'),
  token: $('token'),
  tokenHint: $('token-hint'),
  connection: $('connection'),
  textForm: $('text-form'),
  textInput: $('text-input'),
  sessionId: $('session-id'),
  serverVersion: $('server-version'),
  micInfo: $('mic-info'),
  statSent: $('stat-sent'),
  statHeard: $('stat-heard'),
  statClears: $('stat-clears'),
};

window.voicebridge = {
  client,
  stats: client.stats,
  statusHistory: client.statusHistory,
  transcript: client.transcript,
  config: null,
  errors: [],
};

function showStatus(value, hint) {
  ui.status.textContent = value;
  ui.pill.dataset.status = value;
  ui.hint.textContent = hint ?? STATUS_HINTS[value] ?? '';
}

function setBusy(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  document.body.classList.toggle('live', running);
}

// -- errors -----------------------------------------------------------------------------

function showError(message, { kind = 'error', code = '' } = {}) {
  window.voicebridge.errors.push({ message, code, kind });
  const item = document.createElement('div');
  item.className = `toast toast-${kind}`;
  item.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  const text = document.createElement('span');
  text.textContent = message;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'toast-close';
  close.setAttribute('aria-label', 'Dismiss');
  close.textContent = '×';
  close.addEventListener('click', () => item.remove());
  item.append(text, close);
  ui.errors.append(item);
  while (ui.errors.children.length > 3) ui.errors.firstElementChild.remove();
  if (kind !== 'error') setTimeout(() => item.remove(), 8000);
}

// -- transcript -------------------------------------------------------------------------

const MAX_BUBBLES = 500; // like client.transcript, only the most recent lines are kept

function addBubble(role, text, source) {
  ui.empty.hidden = true;
  const li = document.createElement('li');
  li.className = `bubble bubble-${role}`;
  li.dataset.role = role;
  if (source) li.dataset.source = source;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Agent';
  const body = document.createElement('p');
  body.textContent = text;
  li.append(who, body);
  ui.transcript.append(li);
  while (ui.transcript.children.length > MAX_BUBBLES) ui.transcript.firstElementChild.remove();
  li.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
}

// -- meter ------------------------------------------------------------------------------

let level = 0;
let levelTarget = 0;
let meterFrame = 0;
function drawMeter() {
  // Fast attack, slow release, like a VU meter.
  level = levelTarget > level ? levelTarget : level * 0.9 + levelTarget * 0.1;
  const db = level > 0 ? 20 * Math.log10(level) : -Infinity;
  const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
  ui.meterFill.style.width = `${pct}%`;
  ui.meterDb.textContent = db > -60 ? `${Math.round(db)} dB` : 'quiet';
  meterFrame = level > 1e-4 || levelTarget > 0 ? requestAnimationFrame(drawMeter) : 0;
}
function setLevel(rms) {
  levelTarget = rms;
  if (!meterFrame) meterFrame = requestAnimationFrame(drawMeter);
}

// -- client events ----------------------------------------------------------------------

client.addEventListener('state', (e) => {
  const { state, reason, delayMs, attempt } = e.detail;
  if (state === 'connecting') {
    setBusy(true);
    showStatus('connecting');
  } else if (state === 'open') {
    setBusy(true);
    showStatus('connecting', 'Connected. Starting the voice session…');
  } else if (state === 'reconnecting') {
    setBusy(true);
    const secs = (delayMs / 1000).toFixed(1);
    showStatus('reconnecting', `${reason}. Reconnecting in ${secs} s (attempt ${attempt})…`);
  } else if (state === 'stopped' || state === 'failed') {
    setBusy(false);
    showStatus('disconnected', reason && state === 'stopped' ? `${reason}.` : undefined);
  }
});

client.addEventListener('status', (e) => {
  const { status, message } = e.detail;
  showStatus(status, status === 'ended' && message ? `Session ended: ${message}.` : undefined);
});
client.addEventListener('transcript', (e) => addBubble(e.detail.role, e.detail.text, e.detail.source));
client.addEventListener('error', (e) => showError(e.detail.message, { code: e.detail.code }));
client.addEventListener('notice', (e) => showError(e.detail.message, { kind: 'info' }));
client.addEventListener('level', (e) => setLevel(e.detail.rms));
client.addEventListener('session', (e) => {
  const { session_id: id, backend } = e.detail;
  ui.sessionId.textContent = id || '–';
  if (backend) showBackend(backend);
});
client.addEventListener('mic', (e) => {
  const { inputRate, taps } = e.detail;
  ui.micInfo.textContent = `${inputRate / 1000} kHz → 24 kHz (${taps}-tap FIR)`;
});

let lastStatsPaint = 0;
function paintStats() {
  const now = performance.now();
  if (now - lastStatsPaint < 200) return;
  lastStatsPaint = now;
  ui.statSent.textContent = client.stats.framesSent.toLocaleString();
  ui.statHeard.textContent = `${(client.stats.agentAudioMsPlayed / 1000).toFixed(1)} s`;
  ui.statClears.textContent = String(client.stats.clearAudioCount);
}
client.addEventListener('level', paintStats);
client.addEventListener('playback', paintStats);
client.addEventListener('clear', paintStats);

// -- controls ---------------------------------------------------------------------------

ui.start.addEventListener('click', () => {
  ui.errors.replaceChildren();
  const token = ui.token.value.trim();
  if (window.voicebridge.config?.client_token_required && !token) {
    ui.connection.open = true;
    ui.token.focus();
    showError('This server needs a client token. Enter it under Connection.', { code: 'token' });
    return;
  }
  sessionStorage.setItem('voicebridge.token', token);
  client.start({ token });
});

ui.stop.addEventListener('click', () => client.stop());

$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  if (!ui.start.disabled) ui.start.click();
});

ui.textForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = ui.textInput.value;
  if (!text.trim()) return;
  if (client.sendText(text)) {
    ui.textInput.value = '';
    // The server answers typed text without transcribing it back, so show it here.
    client.addLine('user', text, 'typed');
  }
});

window.addEventListener('pagehide', () => client.stop());

// -- server configuration ---------------------------------------------------------------

function showBackend(backend) {
  ui.backend.textContent = backend === 'azure' ? 'Azure Voice Live' : 'Emulator';
  ui.backend.dataset.backend = backend;
  ui.banner.hidden = backend !== 'emulator';
}

async function loadConfig() {
  try {
    const res = await fetch('/config', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const cfg = await res.json();
    window.voicebridge.config = cfg;
    showBackend(cfg.backend);
    ui.serverVersion.textContent = cfg.version ? `v${cfg.version}` : '–';
    if (cfg.client_token_required) {
      ui.tokenHint.textContent = 'This server requires a client token.';
      ui.connection.open = true;
    }
  } catch (err) {
    ui.backend.textContent = 'Unknown';
    showError(`Could not load the server configuration (${err.message}).`, { kind: 'info' });
  }
}

// A token handed out in the page's link (?token=...) fills the field, and is then taken
// out of the address bar so it does not stay in the history or get copied along.
const pageUrl = new URL(window.location.href);
const linkToken = pageUrl.searchParams.get('token');
if (pageUrl.searchParams.has('token')) {
  pageUrl.searchParams.delete('token');
  history.replaceState(history.state, '', pageUrl.href);
}
ui.token.value = linkToken || sessionStorage.getItem('voicebridge.token') || '';
// Connection details are secondary on a phone, where the panel sits below the card.
if (window.matchMedia('(max-width: 820px)').matches) ui.connection.open = false;
showStatus('idle');
loadConfig();
