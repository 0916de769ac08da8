// Playback AudioWorklet: a queue of PCM16 chunks at the context's rate (24 kHz), played
// back to back with no gaps. A short pre-buffer absorbs network jitter at the start of each
// burst; "clear" (barge-in) drops everything queued at once.
//
// Samples are counted by their position in the stream of everything ever queued here, so
// "response" (the chunks queued from now on belong to a new agent response) can say
// exactly how much of that response has been played, whatever was queued or dropped before.

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.prebuffer = Math.round(sampleRate * (opts.prebufferMs ?? 60) / 1000);
    this.maxWait = Math.round(sampleRate * (opts.maxWaitMs ?? 120) / 1000);
    this.chunks = []; // Float32Array, oldest first
    this.offset = 0; // read position inside chunks[0]
    this.queued = 0; // samples waiting
    this.playing = false;
    this.waited = 0; // samples spent waiting for the pre-buffer to fill
    this.played = 0; // samples played since start
    this.enqueued = 0; // samples ever queued
    this.consumed = 0; // samples ever taken off the queue (played or dropped)
    this.responseSeq = 0; // the current response's number, as the page gave it
    this.responseStart = 0; // position of its first sample
    this.responsePlayed = 0; // samples of it played
    this.stopped = false;
    this.sinceReport = 0;
    this.reportEvery = Math.round(sampleRate / 20); // ~50 ms
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'pcm16') {
      if (this.stopped) return;
      const pcm = new Int16Array(msg.data);
      const f = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 0x8000;
      this.chunks.push(f);
      this.queued += f.length;
      this.enqueued += f.length;
    } else if (msg.type === 'response') {
      this.responseSeq = msg.seq;
      this.responseStart = this.enqueued;
      this.responsePlayed = 0;
    } else if (msg.type === 'clear' || msg.type === 'stop') {
      const dropped = this.queued;
      this.chunks = [];
      this.offset = 0;
      this.consumed += this.queued;
      this.queued = 0;
      this.playing = false;
      this.waited = 0;
      if (msg.type === 'stop') this.stopped = true;
      this.report(msg.type === 'stop' ? 'stopped' : 'cleared', dropped);
    }
  }

  process(_inputs, outputs) {
    if (this.stopped) return false;
    const out = outputs[0][0];
    const n = out.length;
    let written = 0;
    if (!this.playing && this.queued > 0) {
      this.waited += n;
      if (this.queued >= this.prebuffer || this.waited >= this.maxWait) {
        this.playing = true;
        this.waited = 0;
      }
    }
    if (this.playing) {
      while (written < n && this.chunks.length) {
        const head = this.chunks[0];
        const take = Math.min(n - written, head.length - this.offset);
        out.set(head.subarray(this.offset, this.offset + take), written);
        written += take;
        this.offset += take;
        if (this.offset === head.length) {
          this.chunks.shift();
          this.offset = 0;
        }
      }
      // Of the samples just played, those at or after the response's start are its own.
      const from = Math.max(this.consumed, this.responseStart);
      const to = this.consumed + written;
      if (to > from) this.responsePlayed += to - from;
      this.consumed += written;
      this.queued -= written;
      this.played += written;
      if (written < n) {
        // Ran dry: the rest of this quantum is silence; wait for the pre-buffer again.
        out.fill(0, written);
        this.playing = false;
        this.report('drained', 0);
      }
    } else {
      out.fill(0);
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceReport += n;
    if (this.sinceReport >= this.reportEvery && (written > 0 || this.queued > 0)) {
      this.report('progress', 0);
    }
    return true;
  }

  report(event, dropped) {
    this.sinceReport = 0;
    this.port.postMessage({
      type: 'state',
      event,
      playedSamples: this.played,
      queuedSamples: this.queued,
      droppedSamples: dropped,
      responseSeq: this.responseSeq,
      responseSamples: this.enqueued - this.responseStart,
      responsePlayedSamples: this.responsePlayed,
    });
  }
}

registerProcessor('voicebridge-playback', PlaybackProcessor);
