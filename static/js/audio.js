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

export class AgentPlayer extends SerialGraph {
  /**
   * @param {(state: {event: string, playedSamples: number, totalPlayedSamples: number,
   *   queuedSamples: number, droppedSamples: number, responseSeq: number,
   *   responseSamples: number, responsePlayedSamples: number}) => void} onState
   *
   * playedSamples counts from this player's (re)start; totalPlayedSamples from the page's
   * first; the response* fields describe the response last marked with beginResponse().
   */
  constructor(onState) {
    super();
    this.onState = onState;
    this.ctx = null;
    this.node = null;
    this.playedBefore = 0; // samples played by earlier graphs of this page
    this.playedNow = 0; // samples played by the current graph
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
      node.port.onmessage = (e) => this.report(e.data);
      this.ctx = ctx;
      this.node = node;
    } catch (err) {
      await release();
      throw err;
    }
  }

  report(state) {
    this.playedNow = state.playedSamples;
    this.onState({ ...state, totalPlayedSamples: this.playedBefore + state.playedSamples });
  }

  /** The chunks queued from now on belong to a new response, numbered `seq`. */
  beginResponse(seq) {
    if (this.node) this.node.port.postMessage({ type: 'response', seq });
  }

  /** Queue one chunk of PCM16 LE mono at 24 kHz (the ArrayBuffer is transferred). */
  enqueue(buffer) {
    if (!this.node) return false;
    this.node.port.postMessage({ type: 'pcm16', data: buffer }, [buffer]);
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
