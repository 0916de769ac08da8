// The page: wires VoiceClient events to the DOM and exposes window.voicebridge for tests.

import { VoiceClient, microphoneProblem } from './client.js';

const $ = (id) => document.getElementById(id);

// Every state the pill can show: the server's statuses (README "WebSocket protocol") and
// the page's own. The key stays in data-status (for CSS and tests); people see the label.
const STATUSES = {
  idle: { label: 'Not started', hint: 'Press Start and allow the microphone.' },
  connecting: { label: 'Connecting…', hint: 'Connecting to the server…' },
  reconnecting: { label: 'Reconnecting…', hint: 'The connection dropped; trying again…' },
  // The server is waiting for speech: from the caller's side, the agent is listening.
  ready: { label: 'Listening', hint: 'Go ahead and speak; the agent is listening.' },
  // The server's "listening" means it has detected speech: the caller is talking.
  listening: {
    label: "You're speaking",
    hint: 'Hearing you. Pause when you are done and the agent will answer.',
  },
  processing: { label: 'Thinking…', hint: 'Got it; the agent is preparing an answer.' },
  agent_speaking: {
    label: 'Agent speaking',
    hint: 'The agent is answering. Just start talking to interrupt.',
  },
  ending: { label: 'Ending soon', hint: 'This conversation is reaching its time limit.' },
  shutting_down: {
    label: 'Server restarting',
    hint: 'The server is restarting; this page reconnects by itself.',
  },
  ended: {
    label: 'Conversation ended',
    hint: 'The conversation has ended. Press Start for a new one.',
  },
  stopped: {
    label: 'Stopped',
    hint: 'You ended the conversation. Press Start for a new one.',
  },
  failed: { label: 'Not connected', hint: 'Press Start to try again.' },
};

/** "some_new_status" -> "Some new status": a newer server's status, still in words. */
function humanize(token) {
  const words = String(token).replace(/[_-]+/g, ' ').trim();
  return words ? words.charAt(0).toUpperCase() + words.slice(1) : 'Unknown';
}

/** "session time limit reached." -> "Session time limit reached" */
function sentence(text) {
  const t = String(text).trim().replace(/[.\s]+$/, '');
  return t.charAt(0).toUpperCase() + t.slice(1);
}

const client = new VoiceClient();
const ui = {
  status: $('status'),
  pill: $('status-pill'),
  hint: $('status-hint'),
  start: $('start'),
  stop: $('stop'),
  errors: $('errors'),
  transcript: $('transcript'),
  transcriptWrap: $('transcript-wrap'),
  empty: $('transcript-empty'),
  meterFill: $('meter-fill'),
  meterDb: $('meter-db'),
  banner: $('emulator-banner'),
  backend: $('backend'),
  callerNotice: $('caller-notice'),
  callerNoticeText: $('caller-notice-text'),
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
  errors: [], // every message shown, repeats included: {message, code, kind}
};

function showStatus(key, hint) {
  const known = Object.hasOwn(STATUSES, key) ? STATUSES[key] : null;
  ui.status.textContent = known ? known.label : humanize(key);
  ui.pill.dataset.status = key;
  ui.hint.textContent = hint ?? known?.hint ?? '';
}

/**
 * Start and Stop swap places as the one enabled button. Focus follows the swap, so a
 * keyboard user who pressed Start lands on Stop (and back) instead of on the page's body;
 * focus elsewhere, such as the message box, is left where it is.
 */
function setBusy(running) {
  const changed = ui.start.disabled !== running;
  const focused = document.activeElement;
  const onControls = [null, document.body, ui.start, ui.stop].includes(focused);
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  document.body.classList.toggle('live', running);
  if (changed && onControls) (running ? ui.stop : ui.start).focus();
}

// -- messages ---------------------------------------------------------------------------

// The one message on show: a new one replaces it, the same one again is counted instead
// of stacked (a page that retries eight times says so once).
let shown = null; // {el, message, kind, count, countEl, timer}

function clearMessage() {
  if (shown) clearTimeout(shown.timer);
  shown = null;
  ui.errors.replaceChildren();
}

function showMessage(message, { kind = 'error', code = '' } = {}) {
  window.voicebridge.errors.push({ message, code, kind });
  if (shown && shown.el.isConnected) {
    if (shown.message === message && shown.kind === kind) {
      shown.count += 1;
      shown.countEl.textContent = ` (${shown.count} times)`;
      armDismiss(shown);
      return;
    }
    // A passing notice does not hide an error the user has not dismissed yet.
    if (kind !== 'error' && shown.kind === 'error') return;
  }
  clearMessage();
  const el = document.createElement('div');
  el.className = `toast toast-${kind}`;
  el.dataset.code = code;
  el.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  const text = document.createElement('span');
  text.className = 'toast-text';
  text.textContent = message;
  const countEl = document.createElement('span');
  countEl.className = 'toast-count';
  text.append(countEl);
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'toast-close';
  close.setAttribute('aria-label', 'Dismiss message');
  close.textContent = '×';
  close.addEventListener('click', () => {
    clearMessage();
    // The button is gone with its message; the focus goes to the call's control.
    (ui.start.disabled ? ui.stop : ui.start).focus();
  });
  el.append(text, close);
  ui.errors.append(el);
  shown = { el, message, kind, count: 1, countEl, timer: 0 };
  armDismiss(shown);
}

function armDismiss(entry) {
  clearTimeout(entry.timer);
  if (entry.kind !== 'error') {
    entry.timer = setTimeout(() => {
      if (shown === entry) clearMessage();
    }, 8000);
  }
}

// -- transcript -------------------------------------------------------------------------

const MAX_ITEMS = 500; // like client.transcript, only the most recent lines are kept

// New lines are followed while the reader is at the bottom, not while they scroll back.
// The transcript scrolls itself: scrollIntoView would also scroll the page and, on a phone,
// push the message box off the screen.
let following = true;
let pinnedTop = -1; // where the page itself last scrolled the transcript to
function pinTranscript() {
  ui.transcriptWrap.scrollTop = ui.transcriptWrap.scrollHeight;
  pinnedTop = ui.transcriptWrap.scrollTop;
}
ui.transcriptWrap.addEventListener('scroll', () => {
  const wrap = ui.transcriptWrap;
  if (wrap.scrollTop === pinnedTop) return; // our own scroll, maybe measured after a resize
  following = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 48;
});
// When a message above it appears or the keyboard opens, the transcript gets shorter; its
// last line stays in view.
new ResizeObserver(() => {
  if (following) pinTranscript();
}).observe(ui.transcriptWrap);

function appendToTranscript(item, { follow = false } = {}) {
  ui.empty.hidden = true;
  ui.transcript.append(item);
  while (ui.transcript.children.length > MAX_ITEMS) ui.transcript.firstElementChild.remove();
  if (follow) following = true;
  if (following) pinTranscript();
}

/** The agent's words as it speaks them: one live bubble per answer. */
function addCaption({ text, responseId }) {
  let li = ui.transcript.querySelector('.bubble-agent[data-live="true"]');
  if (li && responseId && li.dataset.responseId !== responseId) {
    delete li.dataset.live; // a new answer started; the last one stays as it was
    li = null;
  }
  if (!li) {
    li = document.createElement('li');
    li.className = 'bubble bubble-agent';
    li.dataset.role = 'agent';
    li.dataset.live = 'true';
    if (responseId) li.dataset.responseId = responseId;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = 'Agent';
    li.append(who, document.createElement('p'));
    appendToTranscript(li);
  }
  li.querySelector('p').textContent += text;
  if (following) pinTranscript();
}

function addBubble({ role, text, source, typedId, delivery }) {
  const live = role === 'agent' ? ui.transcript.querySelector('.bubble-agent[data-live="true"]') : null;
  if (live) {
    // The answer's full transcript replaces its captions (after a barge-in: what was said).
    delete live.dataset.live;
    if (source) live.dataset.source = source;
    live.querySelector('p').textContent = text;
    return;
  }
  const li = document.createElement('li');
  li.className = `bubble bubble-${role}`;
  li.dataset.role = role;
  if (source) li.dataset.source = source;
  if (typedId) {
    li.dataset.typedId = String(typedId);
    li.dataset.delivery = delivery;
  }
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Agent';
  const body = document.createElement('p');
  body.textContent = text;
  li.append(who, body);
  appendToTranscript(li, { follow: Boolean(typedId) });
}

const TOOL_WORDS = { started: 'is working on it…', done: 'done', failed: 'did not work' };

/** One activity line per tool call, updated in place as it starts and ends. */
function showTool({ name, call_id: callId, status, duration_ms: ms }) {
  let li = ui.transcript.querySelector(`[data-call-id="${CSS.escape(callId)}"]`);
  if (!li) {
    li = document.createElement('li');
    li.className = 'tool-activity';
    li.dataset.callId = callId;
    appendToTranscript(li);
  }
  li.dataset.status = status;
  const words = TOOL_WORDS[status] || status;
  const took = typeof ms === 'number' && status !== 'started' ? ` (${ms} ms)` : '';
  li.textContent = `Tool ${name}: ${words}${took}`;
}

const DELIVERY_NOTES = {
  not_sent: 'Not sent: too many messages in a short time. Wait a moment, then',
  unconfirmed: 'Not confirmed: the connection closed before the server answered. You can',
};

function markTyped({ typedId, text, delivery }) {
  const li = ui.transcript.querySelector(`[data-typed-id="${typedId}"]`);
  if (!li) return;
  li.dataset.delivery = delivery;
  if (!Object.hasOwn(DELIVERY_NOTES, delivery)) return;
  const note = document.createElement('p');
  note.className = 'delivery-note';
  const again = document.createElement('button');
  again.type = 'button';
  again.className = 'link-button';
  again.textContent = 'send it again';
  again.addEventListener('click', () => {
    if (client.sendText(text)) ui.textInput.focus();
  });
  note.append(`${DELIVERY_NOTES[delivery]} `, again, '.');
  li.append(note);
  if (following) pinTranscript();
}

/** A line across the transcript where a new session (a new conversation) begins. */
function addDivider(afterReconnect) {
  const last = ui.transcript.lastElementChild;
  if (!last || last.classList.contains('divider')) return; // nothing above to set apart
  const li = document.createElement('li');
  li.className = 'divider';
  li.dataset.reason = afterReconnect ? 'reconnect' : 'start';
  const title = document.createElement('span');
  title.className = 'divider-title';
  const time = new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  title.textContent = `New conversation · ${time}`;
  li.append(title);
  if (afterReconnect) {
    const why = document.createElement('span');
    why.className = 'divider-note';
    why.textContent =
      'The connection dropped and a new session started; ' +
      'the agent does not remember what was said above.';
    li.append(why);
  }
  appendToTranscript(li, { follow: true });
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

let sessionsStarted = 0;
let reconnected = false; // the next session is started by a reconnect, not by Start

client.addEventListener('state', (e) => {
  const { state, reason, delayMs, attempt, code } = e.detail;
  if (state === 'connecting') {
    setBusy(true);
    reconnected = false;
    showStatus('connecting');
  } else if (state === 'open') {
    setBusy(true);
    showStatus('connecting', 'Connected. Starting the voice session…');
  } else if (state === 'reconnecting') {
    setBusy(true);
    reconnected = true;
    const secs = (delayMs / 1000).toFixed(1);
    showStatus('reconnecting', `${reason}. Trying again in ${secs} s (attempt ${attempt})…`);
  } else if (state === 'stopped' && code === undefined) {
    setBusy(false);
    showStatus('stopped'); // the user's own Stop: nothing went wrong
  } else if (state === 'stopped') {
    // The server ended it on purpose; its status "ended", if it came, already says why.
    setBusy(false);
    if (ui.pill.dataset.status !== 'ended') {
      showStatus('ended', reason ? `${reason}. Press Start for a new conversation.` : undefined);
    }
  } else if (state === 'failed') {
    setBusy(false);
    showStatus('failed');
  }
});

client.addEventListener('status', (e) => {
  const { status, message, seconds_left: secondsLeft } = e.detail;
  let hint;
  if (status === 'ended' && message) hint = `The conversation has ended: ${sentence(message)}.`;
  if (status === 'ending' && Number.isFinite(secondsLeft)) {
    const seconds = Math.max(0, Math.round(secondsLeft));
    hint = `This conversation reaches its time limit in about ${seconds} seconds.`;
  }
  showStatus(status, hint);
});
client.addEventListener('transcript', (e) => addBubble(e.detail));
client.addEventListener('caption', (e) => addCaption(e.detail));
client.addEventListener('tool', (e) => showTool(e.detail));
client.addEventListener('typed', (e) => markTyped(e.detail));
const MIC_BLOCKED_HINT = 'This page cannot use the microphone as it was opened; see below.';
client.addEventListener('error', (e) => {
  showMessage(e.detail.message, { code: e.detail.code });
  if (e.detail.code === 'insecure_context') ui.hint.textContent = MIC_BLOCKED_HINT;
});
client.addEventListener('notice', (e) => showMessage(e.detail.message, { kind: 'info' }));
client.addEventListener('level', (e) => setLevel(e.detail.rms));
client.addEventListener('session', (e) => {
  const { session_id: id, backend } = e.detail;
  ui.sessionId.textContent = id || '–';
  if (backend) showBackend(backend);
  // What went wrong before this session started is over now.
  if (shown?.kind === 'error') clearMessage();
  if (sessionsStarted > 0) addDivider(reconnected);
  sessionsStarted += 1;
  reconnected = false;
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
  clearMessage();
  const token = ui.token.value.trim();
  if (window.voicebridge.config?.client_token_required && !token) {
    ui.connection.open = true;
    ui.token.focus();
    showMessage('This server needs a client token. Enter it under Connection.', { code: 'token' });
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
  if (client.sendText(text)) ui.textInput.value = '';
});

window.addEventListener('pagehide', () => client.stop());

// -- server configuration ---------------------------------------------------------------

function showBackend(backend) {
  ui.backend.textContent = backend === 'azure' ? 'Azure Voice Live' : 'Emulator';
  ui.backend.dataset.backend = backend;
  ui.banner.hidden = backend !== 'emulator';
}

/** The operator's line for callers (CALLER_NOTICE), e.g. that they are talking to an AI. */
function showCallerNotice(text) {
  const notice = typeof text === 'string' ? text.trim() : '';
  ui.callerNoticeText.textContent = notice;
  ui.callerNotice.hidden = !notice;
}

async function loadConfig() {
  try {
    const res = await fetch('/config', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const cfg = await res.json();
    window.voicebridge.config = cfg;
    showBackend(cfg.backend);
    showCallerNotice(cfg.caller_notice);
    ui.serverVersion.textContent = cfg.version ? `v${cfg.version}` : '–';
    if (cfg.client_token_required) {
      ui.tokenHint.textContent = 'This server requires a client token.';
      ui.connection.open = true;
    }
  } catch (err) {
    ui.backend.textContent = 'Unknown';
    showMessage(`Could not load the server configuration (${err.message}).`, { kind: 'info' });
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
// Said before anyone presses Start: opened over plain HTTP from another machine, the page
// cannot have the microphone, and the fix is in the address bar, not in the page.
const micProblem = microphoneProblem();
if (micProblem) {
  showStatus('idle', MIC_BLOCKED_HINT);
  showMessage(micProblem, { code: 'insecure_context' });
}
loadConfig();
