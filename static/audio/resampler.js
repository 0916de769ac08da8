// Streaming sample-rate converter: a Kaiser-windowed sinc FIR evaluated as a polyphase
// filter, so the low-pass that prevents aliasing and the fractional interpolation are one
// step. Used by the capture worklet (device rate -> 24 kHz); plain ES module, no DOM, so it
// also runs on the main thread for tests.

const MAX_PHASES = 512;

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

// Zeroth-order modified Bessel function of the first kind, for the Kaiser window.
function besselI0(x) {
  let sum = 1;
  let term = 1;
  const q = (x * x) / 4;
  for (let k = 1; k < 64; k++) {
    term *= q / (k * k);
    sum += term;
    if (term < sum * 1e-12) break;
  }
  return sum;
}

function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

/**
 * Design parameters for converting inRate -> outRate.
 * The pass band ends at 40 % and the stop band starts at 50 % of the lower of the two
 * rates, so everything that would fold back below the output Nyquist frequency is in the
 * stop band (about 87 dB down with beta = 8.6).
 */
export function designFilter(inRate, outRate, { attenuationDb = 87, beta = 8.6 } = {}) {
  const low = Math.min(inRate, outRate);
  const cutoff = 0.45 * low; // Hz, centre of the transition band
  const transition = 0.1 * low; // Hz
  const c = cutoff / inRate; // cycles per input sample
  const dOmega = (2 * Math.PI * transition) / inRate;
  let taps = Math.ceil((attenuationDb - 8) / (2.285 * dOmega)) + 1;
  if (taps % 2) taps += 1; // even: half the taps on each side of the output instant
  const half = taps / 2;

  const g = gcd(inRate, outRate);
  const up = outRate / g; // output instants fall on multiples of 1/up input samples
  const down = inRate / g;
  const phases = Math.min(up, MAX_PHASES);
  const i0Beta = besselI0(beta);

  // table[p] holds the taps for an output instant p/phases of a sample after the anchor;
  // row `phases` (one whole sample later) closes the interpolation range.
  const table = new Array(phases + 1);
  for (let p = 0; p <= phases; p++) {
    const frac = p / phases;
    const row = new Float32Array(taps);
    let sum = 0;
    for (let j = 0; j < taps; j++) {
      const d = j - (half - 1) - frac; // input sample offset from the output instant
      const r = d / half;
      const w = Math.abs(r) <= 1 ? besselI0(beta * Math.sqrt(1 - r * r)) / i0Beta : 0;
      const h = 2 * c * sinc(2 * c * d) * w;
      row[j] = h;
      sum += h;
    }
    for (let j = 0; j < taps; j++) row[j] /= sum; // unity gain at DC for every phase
    table[p] = row;
  }
  return { inRate, outRate, up, down, taps, half, phases, table, cutoff, transition };
}

export class StreamingResampler {
  constructor(inRate, outRate) {
    this.filter = designFilter(inRate, outRate);
    const { taps } = this.filter;
    // Pending input, starting with half-1 zeros so the first output lines up with the
    // first input sample.
    this.buf = new Float32Array(Math.max(4096, taps * 4));
    this.len = this.filter.half - 1;
    this.pos = this.filter.half - 1; // integer part of the next output instant, in buf
    this.frac = 0; // fractional part, in units of 1/up input samples
  }

  get latencySeconds() {
    return this.filter.half / this.filter.inRate;
  }

  /**
   * Feed input samples; returns the outputs that are ready. The returned array is a view
   * into a reused buffer, valid until the next call.
   */
  process(input) {
    const { taps, half, up, down, phases, table } = this.filter;
    this._append(input);
    const maxOut = Math.ceil(((this.len - this.pos) * up) / down) + 2;
    if (!this.out || this.out.length < maxOut) this.out = new Float32Array(maxOut * 2);
    const out = this.out;
    const buf = this.buf;
    let n = 0;
    // Each output needs buf[pos - half + 1 .. pos + half].
    while (this.pos + half < this.len) {
      const base = this.pos - half + 1;
      let acc = 0;
      if (phases === up) {
        const row = table[this.frac];
        for (let j = 0; j < taps; j++) acc += buf[base + j] * row[j];
      } else {
        // More phases than the table holds: interpolate between the two nearest rows.
        const x = (this.frac * phases) / up;
        const p = Math.floor(x);
        const a = x - p;
        const r0 = table[p];
        const r1 = table[p + 1];
        for (let j = 0; j < taps; j++) acc += buf[base + j] * (r0[j] + a * (r1[j] - r0[j]));
      }
      out[n++] = acc;
      this.frac += down;
      if (this.frac >= up) {
        this.pos += Math.floor(this.frac / up);
        this.frac %= up;
      }
    }
    this._compact();
    return out.subarray(0, n);
  }

  _append(input) {
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
  }

  // Drop input that no future output needs, keeping the half-1 samples of history.
  _compact() {
    const keepFrom = this.pos - (this.filter.half - 1);
    if (keepFrom <= 0) return;
    this.buf.copyWithin(0, keepFrom, this.len);
    this.len -= keepFrom;
    this.pos -= keepFrom;
  }
}

/** Float [-1, 1] -> PCM16, with clipping. */
export function floatToInt16(src, dst = new Int16Array(src.length)) {
  for (let i = 0; i < src.length; i++) {
    const s = Math.max(-1, Math.min(1, src[i]));
    dst[i] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
  }
  return dst;
}
