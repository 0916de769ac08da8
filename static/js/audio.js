// Main-thread halves of the audio path: the microphone capture graph and the agent's voice
// player. Each owns one AudioContext and one worklet node. start() and stop() run one after
// the other, never interleaved: a stop() issued while a start() is still waiting (for the
// microphone prompt, say) waits for it and then tears down whatever it built, and a start()
// issued after that builds a fresh graph only once the old one is gone. So a reconnect or a
// quick Start/Stop/Start never leaves a second graph running.

export const WIRE_RATE = 24000;
export const FRAME_SAMPLES = 480; // 20 ms at 24 kHz
export const FRAME_BYTES = FRAME_SAMPLES * 2;

const workletUrl = (name) => new URL(`../audio/${name}`, import.meta.url).href;

/**
 * Runs start/stop operations strictly in order. Subclasses provide build(ticket), which
 * gives up when `ticket` is no longer current, and teardown().
 */
class SerialGraph {
  constructor() {
    this.tail = null; // the last queued operation (never rejects)
    this.ticket = 0; // bumped by every start() and stop(); an older start() gives up
    this.ctx = null;
  }

  get active() {
    return this.ctx !== null;
  }

  /** Resolves once the graph runs, or at once if a later stop()/start() superseded it. */
  start() {
    const ticket = ++this.ticket;
    return this.serial(() => this.build(ticket));
  }

  /** Resolves once the graph and its context are released. */
  stop() {
    this.ticket++;
    return this.serial(() => this.teardown());
  }

  /**
   * Run `fn` after the operations already queued. With nothing queued it runs at once, so
   * an AudioContext made in it is made inside the caller's task (a click, for autoplay).
   */
  serial(fn) {
    const run = this.tail ? this.tail.then(fn) : fn();
    const tail = run.then(
      () => {},
      () => {},
    );
    this.tail = tail;
    tail.then(() => {
      if (this.tail === tail) this.tail = null;
    });
    return run;
  }
}

export class MicCapture extends SerialGraph {
  /**
   * @param {(pcm: ArrayBuffer, rms: number, peak: number) => void} onFrame
   * @param {(info: {inputRate: number, outputRate: number, taps: number}) => void} onReady
   */
  constructor(onFrame, onReady = () => {}) {
    super();
    this.onFrame = onFrame;
    this.onReady = onReady;
    this.ctx = null;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.sink = null;
    this.info = null;
  }

  async build(ticket) {
    if (this.ctx) return;
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: { ideal: 1 },
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
      },
      video: false,
    });
    const stale = () => ticket !== this.ticket;
    if (stale()) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    // The context runs at the device's own rate; the worklet resamples to 24 kHz.
    const ctx = new AudioContext({ latencyHint: 'interactive' });
    let node = null;
    const release = async () => {
      if (node) {
        node.port.onmessage = null;
        node.disconnect();
      }
      stream.getTracks().forEach((t) => t.stop());
      await ctx.close().catch(() => {});
    };
    try {
      await ctx.audioWorklet.addModule(workletUrl('capture-worklet.js'));
      if (stale()) {
        await release();
        return;
      }
      node = new AudioWorkletNode(ctx, 'voicebridge-capture', {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        channelCount: 1,
        channelCountMode: 'explicit',
        channelInterpretation: 'speakers',
        processorOptions: { targetRate: WIRE_RATE, frameSamples: FRAME_SAMPLES },
      });
      node.port.onmessage = (e) => {
        const msg = e.data;
        if (msg.type === 'frame') this.onFrame(msg.pcm, msg.rms, msg.peak);
        else if (msg.type === 'ready') {
          this.info = msg;
          this.onReady(msg);
        }
      };
      const source = ctx.createMediaStreamSource(stream);
      // A muted sink keeps the worklet pulled by the render graph without echoing the mic.
      const sink = ctx.createGain();
      sink.gain.value = 0;
      source.connect(node);
      node.connect(sink);
      sink.connect(ctx.destination);
      if (ctx.state !== 'running') await ctx.resume();
      if (stale()) {
        source.disconnect();
        sink.disconnect();
        await release();
        return;
      }
      Object.assign(this, { ctx, stream, source, node, sink });
    } catch (err) {
      await release();
      throw err;
    }
  }

  async teardown() {
    const { ctx, stream, source, node, sink } = this;
    if (!ctx) return;
    this.ctx = this.stream = this.source = this.node = this.sink = null;
    node.port.postMessage({ type: 'stop' });
    node.port.onmessage = null;
    source.disconnect();
    node.disconnect();
    sink.disconnect();
    stream.getTracks().forEach((t) => t.stop());
    await ctx.close().catch(() => {});
  }
}

const FINAL_REPORT_WAIT_MS = 300;
const MAX_TRACKED_RESPONSES = 16; // older responses have long finished playing

export class AgentPlayer extends SerialGraph {
  /**
   * @param {(state: {event: string, playedSamples: number, totalPlayedSamples: number,
   *   queuedSamples: number, droppedSamples: number,
   *   responses: {key: string|number, samples: number, played: number}[]}) => void} onState
   *
   * playedSamples counts from this player's (re)start; totalPlayedSamples from the page's
   * first. responses lists the recent responses marked with beginResponse(key), oldest
   * first: how many samples of each were queued and how many of those were played.
   *
   * The worklet plays what it is given in order and drops audio only on clear or stop,
   * reporting each of those at once. So the main thread knows where every response starts
   * in the stream of samples queued on this graph, and each report says which stretch of
   * that stream was played since the previous one (and which was then dropped): the
   * played samples are shared out to the responses they belong to. A response that is no
   * longer playing keeps its exact count.
   */
  constructor(onState) {
    super();
    this.onState = onState;
    this.ctx = null;
    this.node = null;
    this.playedBefore = 0; // samples played by earlier graphs of this page
    this.playedNow = 0; // samples played by the current graph
    this.resetPositions();
  }

  /** A new graph: its stream of samples starts at zero. */
  resetPositions() {
    this.enqueued = 0; // samples queued on the current graph
    this.consumed = 0; // samples it took off its queue, played or dropped
    this.responses = []; // {key, start, played}, oldest first; each ends where the next starts
  }

  async build(ticket) {
    if (this.ctx) return;
    // The context runs at the wire rate, so agent audio needs no resampling here; the
    // browser converts to the output device's rate.
    const ctx = new AudioContext({ sampleRate: WIRE_RATE, latencyHint: 'interactive' });
    let node = null;
    const release = async () => {
      if (node) {
        node.port.onmessage = null;
        node.disconnect();
      }
      await ctx.close().catch(() => {});
    };
    try {
      await ctx.audioWorklet.addModule(workletUrl('playback-worklet.js'));
      if (ticket !== this.ticket) {
        await release();
        return;
      }
      node = new AudioWorkletNode(ctx, 'voicebridge-playback', {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { prebufferMs: 60, maxWaitMs: 120 },
      });
      node.connect(ctx.destination);
      if (ctx.state !== 'running') await ctx.resume();
      if (ticket !== this.ticket) {
        await release();
        return;
      }
      // A new worklet counts from zero.
      this.playedNow = 0;
      this.resetPositions();
      node.port.onmessage = (e) => this.report(e.data);
      this.ctx = ctx;
      this.node = node;
    } catch (err) {
      await release();
      throw err;
    }
  }

  report(state) {
    const played = Math.max(0, state.playedSamples - this.playedNow);
    this.credit(this.consumed, this.consumed + played);
    this.consumed += played + state.droppedSamples;
    this.playedNow = state.playedSamples;
    this.onState({
      event: state.event,
      playedSamples: state.playedSamples,
      queuedSamples: state.queuedSamples,
      droppedSamples: state.droppedSamples,
      totalPlayedSamples: this.playedBefore + state.playedSamples,
      responses: this.responses.map((r, i) => ({
        key: r.key,
        samples: this.responseEnd(i, this.enqueued) - r.start,
        played: r.played,
      })),
    });
  }

  responseEnd(i, last) {
    return i + 1 < this.responses.length ? this.responses[i + 1].start : last;
  }

  /** Credit the samples at stream positions [from, to), just played, to their responses. */
  credit(from, to) {
    if (to <= from) return;
    this.responses.forEach((r, i) => {
      const overlap = Math.min(to, this.responseEnd(i, Infinity)) - Math.max(from, r.start);
      if (overlap > 0) r.played += overlap;
    });
  }

  /**
   * The chunks queued from now on belong to the response `key` (a server's response id, or
   * any number); null: to no response.
   */
  beginResponse(key) {
    const last = this.responses[this.responses.length - 1];
    if (last && last.start === this.enqueued) this.responses.pop(); // it got no audio
    this.responses.push({ key, start: this.enqueued, played: 0 });
    if (this.responses.length > MAX_TRACKED_RESPONSES) this.responses.shift();
  }

  /** Queue one chunk of PCM16 LE mono at 24 kHz (the ArrayBuffer is transferred). */
  enqueue(buffer) {
    if (!this.node) return false;
    const samples = buffer.byteLength >> 1; // read before the transfer empties it
    this.node.port.postMessage({ type: 'pcm16', data: buffer }, [buffer]);
    this.enqueued += samples;
    return true;
  }

  clear() {
    if (this.node) this.node.port.postMessage({ type: 'clear' });
  }

  async teardown() {
    const { ctx, node } = this;
    if (!ctx) return;
    this.ctx = this.node = null;
    // Drop what is queued and wait for the worklet's last report, so the final count of
    // played audio is not lost.
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, FINAL_REPORT_WAIT_MS);
      node.port.onmessage = (e) => {
        this.report(e.data);
        if (e.data.event === 'stopped') {
          clearTimeout(timer);
          resolve();
        }
      };
      node.port.postMessage({ type: 'stop' });
    });
    node.port.onmessage = null;
    node.disconnect();
    this.playedBefore += this.playedNow;
    this.playedNow = 0;
    await ctx.close().catch(() => {});
  }
}
