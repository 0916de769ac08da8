// VoiceClient: one voice session over /ws/voice, with the microphone graph, the agent
// player, keepalive and reconnection. It knows nothing about the DOM; the page listens to
// its events: state, session, status, transcript, typed, clear, error, notice, level, mic,
// playback.

import { AgentPlayer, MicCapture, WIRE_RATE } from './audio.js';
import { codeInfo, shouldReconnect } from './errors.js';

const PING_INTERVAL_MS = 15000;
const SILENT_SERVER_MS = 45000; // no frame at all for this long: treat the socket as dead
const PLAYBACK_REPORT_MS = 250;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 10000;
const BACKOFF_AT_CAPACITY_MS = 5000;
const MAX_RECONNECTS = 8;
const MAX_HISTORY = 500; // statusHistory and transcript keep this many entries
// Past about 1 s of audio waiting in the socket's send buffer (a network stall), new mic
// frames are dropped: sending them later would only deliver stale speech.
const MAX_BUFFERED_BYTES = 48000;
// What a browser can offer as a WebSocket subprotocol (an RFC 7230 token).
const SUBPROTOCOL_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

export const CLOSE_REASONS = {
  1000: 'Session ended by the server',
  1001: 'Server is restarting',
  1006: 'Connection lost',
  1008: 'Not allowed by server policy',
  1009: 'A message was too large for the server',
  1011: 'The voice service failed',
  1013: 'Server is at capacity',
};
// Reasons for codes whose close code alone would say something else.
const CODE_REASONS = {
  slow_consumer: 'The connection was too slow for the audio',
};

/**
 * Why this page cannot use the microphone, in words a caller can act on; null when it can.
 *
 * Browsers offer getUserMedia and audio worklets only to secure contexts: https pages and
 * http://localhost. A page opened as http://<a name or address> gets neither, and without
 * this check the first thing that fails is "Cannot read properties of undefined".
 */
export function microphoneProblem(win = window) {
  if (win.navigator.mediaDevices?.getUserMedia && win.AudioWorkletNode) return null;
  const { location } = win;
  if (!win.isSecureContext) {
    const port = location.port ? `:${location.port}` : '';
    return (
      `The microphone is blocked because this page was opened over plain HTTP ` +
      `(${location.origin}); browsers allow it only on secure pages. Open the page with an ` +
      `https:// address (the server, or a proxy in front of it, needs a TLS certificate), ` +
      `or open http://localhost${port}${location.pathname} on the computer running ` +
      `voicebridge.`
    );
  }
  return (
    'This browser offers no microphone access on this page. Use a current Chrome, Edge, ' +
    'Firefox or Safari; if the page is shown inside another page, that page must allow ' +
    'the microphone.'
  );
}

/** Append to a list that keeps only its last MAX_HISTORY entries (in place). */
function pushCapped(list, item) {
  list.push(item);
  if (list.length > MAX_HISTORY) list.splice(0, list.length - MAX_HISTORY);
}

/** Samples at the wire rate -> whole milliseconds. */
function ms(samples) {
  return Math.round((samples * 1000) / WIRE_RATE);
}

/** "server restarting; please reconnect." -> "Server restarting; please reconnect" */
function sentence(text) {
  const t = String(text).trim().replace(/[.\s]+$/, '');
  return t.charAt(0).toUpperCase() + t.slice(1);
}

export class VoiceClient extends EventTarget {
  constructor({ baseUrl = window.location.href } = {}) {
    super();
    this.baseUrl = new URL('/', baseUrl);
    this.token = '';
    this.tokenAccepted = false; // a socket offering this token has opened
    this.state = 'idle'; // idle | connecting | open | reconnecting | stopped | failed
    this.ws = null;
    this.generation = 0; // bumps whenever a socket is replaced; stale events are ignored
    this.run = 0; // bumps at every start() and stop(); work begun for an older run gives up
    this.attempt = 0;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.lastServerFrameAt = 0;
    this.lastReportAt = 0;
    this.serverStatus = null; // the last status of the current socket
    this.agentSpeaking = false; // between status agent_speaking and the next clear/close
    this.responsePending = false; // agent_speaking seen; the next audio starts a response
    this.responseSeq = 0; // number of the current response (its audio is marked with it)
    // Per socket: the server announces each response with audio_start (newer servers), and
    // then playback reports name the response they count.
    this.responseIds = false;
    // Response ids announced on this socket -> samples played when last reported (-1:
    // not yet). Only these are reported: the player may still track an earlier socket's.
    this.reportedPlayed = new Map();
    this.endedCode = null; // the code of this socket's status "ended", if any
    this.errorCode = null; // the code of this socket's last error message, if any
    // Typed messages get no answer of their own when accepted, only an error when dropped
    // (rate_limited). Each is followed by a ping: the server handles a socket's messages
    // in order, so its pong says every message sent before that ping was handled, and a
    // rate_limited error that comes first belongs to the oldest message still waiting.
    this.typedPending = []; // {line, ack}: ack is the number of pongs that settles it
    this.typedSeq = 0;
    this.pingsSent = 0; // on this socket
    this.pongsReceived = 0; // on this socket
    this.sessionId = null;
    this.backend = null;
    this.stats = {
      framesSent: 0,
      bytesSent: 0,
      framesDropped: 0, // mic frames not sent: socket not open, or send buffer too full
      framesDroppedStalled: 0, // of those, dropped because the send buffer was too full
      agentAudioMsReceived: 0,
      agentAudioMsPlayed: 0,
      agentAudioMsQueued: 0,
      clearAudioCount: 0,
      reconnects: 0,
      lastFrameRms: 0,
      maxFrameRms: 0,
      captureRate: null,
      resamplerTaps: null,
    };
    this.statusHistory = []; // the last MAX_HISTORY statuses
    this.transcript = []; // the last MAX_HISTORY lines
    this.receivedSamples = 0;
    this.playedSamples = 0;

    this.mic = new MicCapture(
      (pcm, rms, peak) => this.onMicFrame(pcm, rms, peak),
      (info) => {
        this.stats.captureRate = info.inputRate;
        this.stats.resamplerTaps = info.taps;
        this.emit('mic', { ...info });
      },
    );
    this.player = new AgentPlayer((s) => this.onPlayerState(s));
  }

  emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit('state', { state, ...detail });
  }

  // -- lifecycle -----------------------------------------------------------------------

  async start({ token = '' } = {}) {
    if (this.state === 'connecting' || this.state === 'open' || this.state === 'reconnecting') {
      return;
    }
    const run = ++this.run;
    this.token = token;
    this.tokenAccepted = false;
    this.attempt = 0;
    const micProblem = microphoneProblem();
    if (micProblem) {
      this.setState('failed');
      this.emit('error', { message: micProblem, code: 'insecure_context' });
      return;
    }
    if (token && !SUBPROTOCOL_CHARS.test(token)) {
      this.setState('failed');
      this.emit('error', {
        message:
          "The client token has characters a browser cannot send (allowed: letters, digits and !#$%&'*+-.^_`|~).",
        code: 'token',
      });
      return;
    }
    this.resetPlayback();
    this.setState('connecting');
    try {
      // The player's context is made inside the click handler's task, so autoplay rules
      // allow it to start.
      await Promise.all([this.player.start(), this.mic.start()]);
    } catch (err) {
      if (run !== this.run) return; // stopped meanwhile; stop() releases the audio
      await this.teardownAudio();
      if (run !== this.run) return;
      this.setState('failed');
      const name = err && err.name;
      const message =
        name === 'NotAllowedError'
          ? 'Microphone permission was denied. Allow it in the browser and try again.'
          : name === 'NotFoundError'
            ? 'No microphone was found.'
            : `Could not start audio: ${err && err.message ? err.message : err}`;
      this.emit('error', { message, code: 'audio' });
      return;
    }
    // Stopped (and maybe started again) while the microphone prompt was open: that run
    // owns the audio and the socket now.
    if (run !== this.run || this.state !== 'connecting') return;
    this.connect();
  }

  async stop() {
    this.run++;
    this.cancelReconnect();
    this.closeSocket(1000, 'client stopped');
    this.resetPlayback();
    // Audio start and stop run in order, so a new start() may begin before this finishes.
    const released = this.teardownAudio();
    this.setState('stopped');
    await released;
  }

  async teardownAudio() {
    await Promise.allSettled([this.mic.stop(), this.player.stop()]);
    this.emit('level', { rms: 0, peak: 0 });
  }

  /** The socket is gone or replaced: nothing queued for the listener is still wanted. */
  resetPlayback() {
    this.player.clear();
    this.player.beginResponse(null); // audio from now on belongs to no known response
    this.agentSpeaking = false;
    this.responsePending = false;
  }

  wsUrl() {
    const url = new URL('/ws/voice', this.baseUrl);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
  }

  /** The token travels as an offered subprotocol, never in the URL (which proxies log). */
  wsProtocols() {
    return this.token ? ['voicebridge', `token.${this.token}`] : ['voicebridge'];
  }

  connect() {
    if (this.ws) this.closeSocket(1000, 'replaced');
    const gen = ++this.generation;
    let opened = false;
    let ws;
    try {
      ws = new WebSocket(this.wsUrl(), this.wsProtocols());
    } catch (err) {
      const run = this.run;
      this.teardownAudio().then(() => {
        if (run !== this.run) return;
        this.setState('failed');
        this.emit('error', { message: `Could not connect: ${err.message || err}`, code: 'socket' });
      });
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.serverStatus = null;
    this.responseIds = false;
    this.reportedPlayed.clear();
    this.endedCode = null;
    this.errorCode = null;
    this.pingsSent = 0;
    this.pongsReceived = 0;
    ws.onopen = () => {
      if (gen !== this.generation) return;
      opened = true;
      if (this.token) this.tokenAccepted = true;
      this.lastServerFrameAt = performance.now();
      this.startKeepalive();
      this.setState('open');
    };
    ws.onmessage = (ev) => {
      if (gen !== this.generation) return;
      this.lastServerFrameAt = performance.now();
      if (typeof ev.data === 'string') this.onServerText(ev.data);
      else this.onAgentAudio(ev.data);
    };
    ws.onerror = () => {
      // Always followed by close; the close handler decides what to do.
    };
    ws.onclose = (ev) => {
      if (gen !== this.generation) return;
      this.detachSocket();
      this.onSocketClosed(ev, opened);
    };
  }

  detachSocket() {
    this.stopKeepalive();
    // The server may or may not have handled what was still waiting for its pong.
    this.settleTyped(this.typedPending.length, 'unconfirmed');
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onerror = this.ws.onclose = null;
    }
    this.ws = null;
    this.generation++;
  }

  closeSocket(code, reason) {
    const ws = this.ws;
    this.detachSocket();
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
  }

  async onSocketClosed(ev, opened) {
    const run = this.run;
    this.resetPlayback();
    const code = ev.code;
    const lastCode = this.endedCode || this.errorCode;
    const reason = sentence(
      ev.reason ||
        (Object.hasOwn(CODE_REASONS, lastCode ?? '') && CODE_REASONS[lastCode]) ||
        CLOSE_REASONS[code] ||
        `Connection closed (${code})`,
    );
    if (!opened) {
      // A refused upgrade (401/403) looks exactly like an unreachable server to a page, so
      // ask the server over plain HTTP what it thinks of this request.
      let verdict = await this.probeUpgrade();
      if (run !== this.run || this.state === 'stopped') return;
      // The probe cannot carry the token (a page cannot set that header), so its 401 says
      // only that a token is needed; a token that has already opened a session is not it.
      if (verdict === 'rejected' && this.tokenAccepted) verdict = 'unknown';
      const firstTry = this.state === 'connecting';
      if (verdict === 'rejected' || (verdict === 'unknown' && firstTry)) {
        await this.teardownAudio();
        if (run !== this.run) return;
        this.setState('failed', { code, reason: 'Connection refused' });
        this.emit('error', {
          message: 'The server refused the connection: token rejected or origin not allowed.',
          code: 'rejected',
        });
        return;
      }
      this.scheduleReconnect({
        code,
        reason: verdict === 'busy' ? 'Server is busy or restarting' : 'Server unreachable',
      });
      return;
    }
    // The code the server gave decides where the table says so (errors.js), else the
    // close code: 1008/1009 fail, 1000 stops, 1001/1006/1011/1013 and the rest reconnect.
    if (shouldReconnect(code, { ended: this.endedCode, error: this.errorCode })) {
      // A busy server gets the long backoff; a network that stalled, the short one.
      const busy = lastCode === 'at_capacity' || (code === 1013 && lastCode !== 'slow_consumer');
      this.scheduleReconnect({ code, reason, busy });
      return;
    }
    await this.teardownAudio();
    if (run !== this.run) return;
    // A session the server ended on purpose (1000, or a status "ended" whose code closes
    // with 1000 even if the close frame was lost) stops; the rest failed.
    if ((codeInfo(this.endedCode)?.close ?? code) === 1000) {
      this.setState('stopped', { code, reason });
      this.emit('notice', { message: `${reason}.` });
      return;
    }
    this.setState('failed', { code, reason });
    this.emit('error', { message: `${reason} (code ${code}).`, code: `close_${code}` });
  }

  /**
   * Why did the upgrade fail? "rejected" (401/403: token or origin), "busy" (5xx, e.g.
   * draining), "down" (no answer at all) or "unknown" (the server would have accepted this
   * request without a browser Origin, so the origin is the likely culprit).
   */
  async probeUpgrade() {
    const url = new URL(this.wsUrl());
    url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    try {
      const res = await fetch(url, { cache: 'no-store', credentials: 'omit' });
      if (res.status === 401 || res.status === 403) return 'rejected';
      if (res.status >= 500) return 'busy';
      return 'unknown';
    } catch {
      return 'down';
    }
  }

  scheduleReconnect({ code, reason, busy = code === 1013 }) {
    const run = this.run;
    if (this.attempt >= MAX_RECONNECTS) {
      this.teardownAudio().then(() => {
        if (run !== this.run) return;
        this.setState('failed', { code, reason });
        this.emit('error', {
          message: `${reason}. Gave up after ${MAX_RECONNECTS} attempts; press Start to retry.`,
          code: 'reconnect_failed',
        });
      });
      return;
    }
    const base = busy ? BACKOFF_AT_CAPACITY_MS : BACKOFF_BASE_MS;
    const exp = Math.min(BACKOFF_MAX_MS, base * 2 ** this.attempt);
    const delay = Math.round(exp * (0.75 + Math.random() * 0.5));
    this.attempt += 1;
    this.stats.reconnects += 1;
    this.setState('reconnecting', { code, reason, delayMs: delay, attempt: this.attempt });
    this.cancelReconnect();
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (run === this.run && this.state === 'reconnecting') this.connect();
    }, delay);
  }

  cancelReconnect() {
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  startKeepalive() {
    this.stopKeepalive();
    this.pingTimer = setInterval(() => {
      if (performance.now() - this.lastServerFrameAt > SILENT_SERVER_MS) {
        // Half-open socket: nothing came back, not even pongs. Start over.
        const ws = this.ws;
        this.detachSocket();
        if (ws) {
          try {
            ws.close(4000, 'keepalive timeout');
          } catch {
            ws.close();
          }
        }
        this.resetPlayback();
        this.scheduleReconnect({ code: 1006, reason: 'Server stopped answering' });
        return;
      }
      this.sendPing();
    }, PING_INTERVAL_MS);
  }

  stopKeepalive() {
    if (this.pingTimer !== null) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  // -- outgoing ------------------------------------------------------------------------

  isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  sendJson(obj) {
    if (!this.isOpen()) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  sendPing() {
    if (this.sendJson({ type: 'ping' })) this.pingsSent += 1;
  }

  /**
   * Send a typed message and add it to the transcript (the server does not transcribe
   * typed text back). Returns its transcript line, whose `delivery` goes from "pending" to
   * "sent", "not_sent" (dropped by the server's rate limit) or "unconfirmed" (the socket
   * closed first), each change announced by a `typed` event; null if nothing was sent.
   */
  sendText(text) {
    const clean = text.trim();
    if (!clean) return null;
    if (!this.sendJson({ type: 'text', text: clean })) {
      this.emit('error', { message: 'Not connected: start a session first.', code: 'offline' });
      return null;
    }
    const line = this.addLine('user', clean, 'typed', {
      typedId: ++this.typedSeq,
      delivery: 'pending',
    });
    this.typedPending.push({ line, ack: this.pingsSent + 1 });
    this.sendPing();
    return line;
  }

  /** The oldest `count` typed messages still waiting are settled as `delivery`. */
  settleTyped(count, delivery, detail = {}) {
    for (const { line } of this.typedPending.splice(0, count)) {
      line.delivery = delivery;
      this.emit('typed', { typedId: line.typedId, text: line.text, delivery, ...detail });
    }
  }

  onMicFrame(pcm, rms, peak) {
    this.stats.lastFrameRms = rms;
    if (rms > this.stats.maxFrameRms) this.stats.maxFrameRms = rms;
    this.emit('level', { rms, peak });
    if (!this.isOpen()) {
      this.stats.framesDropped += 1; // never queue stale speech across a reconnect
      return;
    }
    if (this.ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      // The network is not keeping up: what is queued is already late; do not add to it.
      this.stats.framesDropped += 1;
      this.stats.framesDroppedStalled += 1;
      return;
    }
    this.ws.send(pcm);
    this.stats.framesSent += 1;
    this.stats.bytesSent += pcm.byteLength;
  }

  // -- incoming ------------------------------------------------------------------------

  onAgentAudio(buffer) {
    if (buffer.byteLength < 2) return;
    const samples = buffer.byteLength >> 1;
    this.receivedSamples += samples;
    this.stats.agentAudioMsReceived = (this.receivedSamples * 1000) / WIRE_RATE;
    if (this.responsePending) {
      // Older servers (no audio_start): the first audio after status agent_speaking starts
      // a new response.
      this.responsePending = false;
      this.responseSeq += 1;
      this.player.beginResponse(this.responseSeq);
    }
    this.player.enqueue(buffer.byteLength & 1 ? buffer.slice(0, samples * 2) : buffer);
  }

  onPlayerState(s) {
    this.playedSamples = s.totalPlayedSamples;
    this.stats.agentAudioMsPlayed = (s.totalPlayedSamples * 1000) / WIRE_RATE;
    this.stats.agentAudioMsQueued = (s.queuedSamples * 1000) / WIRE_RATE;
    this.emit('playback', { ...s });
    // Tell the server how much of each response was actually heard, so a barge-in
    // truncates the agent's turn where the listener stopped hearing it.
    if (s.event === 'stopped') return; // the socket is going away
    if (this.responseIds) this.reportPlayedById(s);
    else this.reportPlayedCurrent(s);
  }

  /**
   * A report per response whose played count changed, naming it: correct for that
   * response whether or not it is still playing, so the final count of an interrupted one
   * is sent too (at once when it is cleared or playback drains, else at most every
   * PLAYBACK_REPORT_MS).
   */
  reportPlayedById(s) {
    const now = performance.now();
    if (s.event === 'progress' && now - this.lastReportAt < PLAYBACK_REPORT_MS) return;
    let sent = false;
    for (const r of s.responses) {
      if (r.samples === 0 || !this.reportedPlayed.has(r.key)) continue;
      if (this.reportedPlayed.get(r.key) === r.played) continue;
      const report = { type: 'playback', response_id: r.key, played_ms: ms(r.played) };
      if (!this.sendJson(report)) return;
      this.reportedPlayed.set(r.key, r.played);
      sent = true;
    }
    if (sent) this.lastReportAt = now;
    if (this.reportedPlayed.size > s.responses.length) {
      const tracked = new Set(s.responses.map((r) => r.key));
      for (const key of this.reportedPlayed.keys()) {
        if (!tracked.has(key)) this.reportedPlayed.delete(key);
      }
    }
  }

  /**
   * Older servers (no audio_start): a report without an id means "the current response",
   * so only the current response is reported, and only while it is the agent's turn.
   */
  reportPlayedCurrent(s) {
    if (!this.agentSpeaking || s.event === 'cleared') return;
    const current = s.responses[s.responses.length - 1];
    if (!current || current.key !== this.responseSeq || current.samples === 0) return;
    const now = performance.now();
    if (s.event === 'progress' && now - this.lastReportAt < PLAYBACK_REPORT_MS) return;
    this.lastReportAt = now;
    this.sendJson({ type: 'playback', played_ms: ms(current.played) });
  }

  onServerText(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      this.emit('error', { message: 'The server sent a message that is not JSON.', code: 'bad_json' });
      return;
    }
    switch (msg.type) {
      case 'session_started':
        // Only a session that really started resets the backoff: a server that accepts and
        // closes at once (at capacity, upstream down) must not be retried in a tight loop.
        this.attempt = 0;
        this.sessionId = msg.session_id || null;
        this.backend = msg.backend || this.backend;
        this.emit('session', { ...msg });
        break;
      case 'status':
        if (msg.status === 'agent_speaking' && this.serverStatus !== 'agent_speaking') {
          this.agentSpeaking = true;
          // Older servers: a new response, whose audio starts with the next binary frame.
          if (!this.responseIds) this.responsePending = true;
        }
        if (msg.status === 'ended' && typeof msg.code === 'string') this.endedCode = msg.code;
        this.serverStatus = msg.status;
        pushCapped(this.statusHistory, msg.status);
        this.emit('status', { ...msg });
        break;
      case 'user_transcript':
        this.addLine('user', msg.text);
        break;
      case 'agent_transcript':
      case 'agent_text':
        this.addLine('agent', msg.text, msg.type);
        break;
      case 'audio_start':
        // Every binary frame from here to the next audio_start or clear_audio is this
        // response's audio.
        if (typeof msg.response_id !== 'string' || !msg.response_id) break;
        this.responseIds = true;
        this.responsePending = false;
        this.agentSpeaking = true;
        this.reportedPlayed.set(msg.response_id, -1);
        this.player.beginResponse(msg.response_id);
        break;
      case 'clear_audio':
        this.player.clear();
        this.player.beginResponse(null);
        this.agentSpeaking = false;
        this.responsePending = false;
        this.stats.clearAudioCount += 1;
        this.emit('clear', {});
        break;
      case 'error':
        if (typeof msg.code === 'string' && msg.code) this.errorCode = msg.code;
        if (msg.code === 'rate_limited' && this.typedPending.length) {
          // The oldest typed message not yet handled was dropped; the session goes on.
          this.settleTyped(1, 'not_sent', { code: msg.code, message: msg.message || '' });
          break;
        }
        this.emit('error', { message: msg.message || 'Unknown error', code: msg.code || '' });
        break;
      case 'tool':
        // The agent is using one of the operator's tools (the page can never call one).
        if (typeof msg.call_id === 'string' && typeof msg.name === 'string') {
          this.emit('tool', { ...msg });
        }
        break;
      case 'agent_transcript_delta':
        // Live captions while the agent speaks; the full transcript replaces them.
        if (typeof msg.text === 'string' && msg.text) {
          this.emit('caption', { text: msg.text, responseId: msg.response_id || null });
        }
        break;
      case 'pong': {
        this.pongsReceived += 1;
        const handled = this.typedPending.findIndex((t) => t.ack > this.pongsReceived);
        this.settleTyped(handled < 0 ? this.typedPending.length : handled, 'sent');
        break;
      }
      default:
        // Newer servers may send more; ignore what this page does not know.
        break;
    }
  }

  lastStatus() {
    return this.statusHistory.length ? this.statusHistory[this.statusHistory.length - 1] : null;
  }

  /** Add a line to the transcript; `extra` fields are kept on it. Returns the line. */
  addLine(role, text, source = role, extra = {}) {
    if (typeof text !== 'string' || !text.trim()) return null;
    const line = { role, text: text.trim(), ...extra };
    pushCapped(this.transcript, line);
    this.emit('transcript', { ...line, source });
    return line;
  }
}
