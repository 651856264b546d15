// The recogniser's decision, as sabr.apps does it: calibrated probabilities softmax(logits / T), the
// out-of-distribution check of the raw logits (a frame that fails it adds zeros to the average: it is never
// claimed), the temporal smoothing and claim threshold (sabr.apps.smoothing.TemporalSmoother), and the
// stable-gesture rule (sabr.apps.smoothing.StableGesture).
// `decision` is app.json's {temperature, threshold, ood: {score, threshold}} (the model's calibration).

// softmax(logits / T) in float64 (a Float64Array summing to 1).
export function softmax(logits, temperature = 1) {
  const z = Array.from(logits, (v) => v / temperature);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return Float64Array.from(e, (v) => v / s);
}

// The out-of-distribution score of one frame's raw logits (higher: more like the training data):
// "max_logit": the largest logit; "energy": logsumexp(logits) (minus the energy); null for no check.
export function oodScore(logits, kind) {
  if (kind === "max_logit") return Math.max(...logits);
  if (kind === "energy") {
    const m = Math.max(...logits);
    return m + Math.log(Array.from(logits).reduce((a, v) => a + Math.exp(v - m), 0));
  }
  return null;
}

// What one frame adds to the smoother: its calibrated probabilities, or zeros when the OOD check rejects it.
// Returns {probs, evidence, score, known}.
export function judge(logits, decision) {
  const probs = softmax(logits, decision.temperature);
  const ood = decision.ood || {};
  const score = ood.score ? oodScore(logits, ood.score) : null;
  const known = score === null || ood.threshold === null || score >= ood.threshold;
  return { probs, evidence: known ? probs : new Float64Array(probs.length), score, known };
}

// The first index of the largest value (numpy's argmax).
export function argmax(values) {
  let k = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[k]) k = i;
  return k;
}

// Up to three [class index, probability] pairs, best first (ties: the lower index, like a stable sort).
export function top3(probs) {
  return Array.from(probs, (p, i) => [i, p]).sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, 3);
}

// Mean of the class probabilities over the last `window` frames; a label is claimed when the mean's
// largest probability reaches `threshold` (and is above zero: all-zero evidence claims nothing).
export class TemporalSmoother {
  constructor(window = 5, threshold = 0.6) {
    this.window = window;
    this.threshold = threshold;
    this.history = [];
  }

  // One frame's evidence (probabilities, or zeros) -> {label (index or null), confidence}.
  update(probs) {
    this.history.push(Float64Array.from(probs));
    if (this.history.length > this.window) this.history.shift();
    const n = this.history.length;
    const mean = new Float64Array(probs.length);
    for (const h of this.history) for (let i = 0; i < mean.length; i++) mean[i] += h[i];
    for (let i = 0; i < mean.length; i++) mean[i] /= n;
    const k = argmax(mean), confidence = mean[k];
    return { label: confidence >= this.threshold && confidence > 0 ? k : null, confidence };
  }

  reset() {
    this.history = [];
  }
}

// Fires once per held gesture: the same smoothed label, with confidence >= minConfidence, for `frames`
// consecutive frames; the gesture must be interrupted before it can fire again.
export class StableGesture {
  constructor(frames = 8, minConfidence = 0.7) {
    this.frames = frames;
    this.minConfidence = minConfidence;
    this.label = null;
    this.count = 0;
    this.fired = false;
  }

  // One frame's smoothed result -> the label on the frame it becomes stable, else null.
  update(smoothed) {
    const label = smoothed.confidence >= this.minConfidence ? smoothed.label : null;
    if (label === null || label !== this.label) {
      this.label = label;
      this.count = 0;
      this.fired = false;
    }
    if (label === null) return null;
    this.count += 1;
    if (this.count >= this.frames && !this.fired) {
      this.fired = true;
      return label;
    }
    return null;
  }
}
