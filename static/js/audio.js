// Main-thread halves of the audio path: the microphone capture graph and the agent's voice
// player. Each owns one AudioContext and one worklet node; start/stop are idempotent so a
// reconnect never builds a second graph.

export const WIRE_RATE = 24000;
export const FRAME_SAMPLES = 480; // 20 ms at 24 kHz
export const FRAME_BYTES = FRAME_SAMPLES * 2;

const workletUrl = (name) => new URL(`../audio/${name}`, import.meta.url).href;

export class MicCapture {
  /**
   * @param {(pcm: ArrayBuffer, rms: number, peak: number) => void} onFrame
   * @param {(info: {inputRate: number, outputRate: number, taps: number}) => void} onReady
   */
  constructor(onFrame, onReady = () => {}) {
    this.onFrame = onFrame;
    this.onReady = onReady;
    this.ctx = null;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.sink = null;
    this.info = null;
  }

  get active() {
    return this.ctx !== null;
  }

  async start() {
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
    // The context runs at the device's own rate; the worklet resamples to 24 kHz.
    const ctx = new AudioContext({ latencyHint: 'interactive' });
    try {
      await ctx.audioWorklet.addModule(workletUrl('capture-worklet.js'));
      const node = new AudioWorkletNode(ctx, 'voicebridge-capture', {
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
      Object.assign(this, { ctx, stream, source, node, sink });
    } catch (err) {
      stream.getTracks().forEach((t) => t.stop());
      await ctx.close().catch(() => {});
      throw err;
    }
  }

  async stop() {
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

export class AgentPlayer {
  /**
   * @param {(state: {event: string, playedSamples: number, queuedSamples: number,
   *   droppedSamples: number}) => void} onState
   */
  constructor(onState) {
    this.onState = onState;
    this.ctx = null;
    this.node = null;
  }

  async start() {
    if (this.ctx) return;
    // The context runs at the wire rate, so agent audio needs no resampling here; the
    // browser converts to the output device's rate.
    const ctx = new AudioContext({ sampleRate: WIRE_RATE, latencyHint: 'interactive' });
    try {
      await ctx.audioWorklet.addModule(workletUrl('playback-worklet.js'));
      const node = new AudioWorkletNode(ctx, 'voicebridge-playback', {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { prebufferMs: 60, maxWaitMs: 120 },
      });
      node.port.onmessage = (e) => this.onState(e.data);
      node.connect(ctx.destination);
      if (ctx.state !== 'running') await ctx.resume();
      this.ctx = ctx;
      this.node = node;
    } catch (err) {
      await ctx.close().catch(() => {});
      throw err;
    }
  }

  /** Queue one chunk of PCM16 LE mono at 24 kHz (the ArrayBuffer is transferred). */
  enqueue(buffer) {
    if (!this.node) return;
    this.node.port.postMessage({ type: 'pcm16', data: buffer }, [buffer]);
  }

  clear() {
    if (this.node) this.node.port.postMessage({ type: 'clear' });
  }

  async stop() {
    const { ctx, node } = this;
    if (!ctx) return;
    this.ctx = this.node = null;
    node.port.postMessage({ type: 'clear' });
    node.port.onmessage = null;
    node.disconnect();
    await ctx.close().catch(() => {});
  }
}
