// Capture AudioWorklet: microphone at the context's rate -> 24 kHz mono PCM16, cut into
// fixed 20 ms frames (480 samples, 960 bytes) that are transferred to the main thread,
// each with its RMS level for the meter.

import { StreamingResampler, floatToInt16 } from './resampler.js';

const TARGET_RATE = 24000;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.targetRate = opts.targetRate || TARGET_RATE;
    this.frameSamples = opts.frameSamples || Math.round(this.targetRate * 0.02);
    this.resampler = new StreamingResampler(sampleRate, this.targetRate);
    this.frame = new Float32Array(this.frameSamples);
    this.fill = 0;
    this.mono = new Float32Array(128);
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'stop') this.running = false;
    };
    this.port.postMessage({
      type: 'ready',
      inputRate: sampleRate,
      outputRate: this.targetRate,
      taps: this.resampler.filter.taps,
      latencyMs: this.resampler.latencySeconds * 1000,
    });
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true; // no source connected yet
    const n = input[0].length;
    if (this.mono.length !== n) this.mono = new Float32Array(n);
    const mono = this.mono;
    if (input.length === 1) {
      mono.set(input[0]);
    } else {
      mono.fill(0);
      for (const ch of input) for (let i = 0; i < n; i++) mono[i] += ch[i];
      for (let i = 0; i < n; i++) mono[i] /= input.length;
    }
    const out = this.resampler.process(mono);
    let i = 0;
    while (i < out.length) {
      const take = Math.min(out.length - i, this.frameSamples - this.fill);
      this.frame.set(out.subarray(i, i + take), this.fill);
      this.fill += take;
      i += take;
      if (this.fill === this.frameSamples) this.emit();
    }
    return true;
  }

  emit() {
    let sum = 0;
    let peak = 0;
    for (let i = 0; i < this.frameSamples; i++) {
      const v = this.frame[i];
      sum += v * v;
      const a = Math.abs(v);
      if (a > peak) peak = a;
    }
    const pcm = floatToInt16(this.frame);
    this.fill = 0;
    this.port.postMessage(
      { type: 'frame', pcm: pcm.buffer, rms: Math.sqrt(sum / this.frameSamples), peak },
      [pcm.buffer],
    );
  }
}

registerProcessor('voicebridge-capture', CaptureProcessor);
