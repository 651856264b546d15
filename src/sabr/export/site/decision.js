// The recogniser's decision, as sabr.apps does it: calibrated probabilities softmax(logits / T), the
// temporal smoothing and confidence threshold (sabr.apps.smoothing.TemporalSmoother), the optional
// out-of-distribution score, and the stable-gesture rule (sabr.apps.smoothing.StableGesture).
// `decision` is app.json's {temperature, threshold, ood: {score, threshold}}.

// softmax(logits / T) in float64 (a Float64Array summing to 1).
export function softmax(logits, temperature = 1) {
  const z = Array.from(logits, (v) => v / temperature);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return Float64Array.from(e, (v) => v / s);
}

// The out-of-distribution score of one frame's logits; higher means more like the training data:
// "max_logit": the largest logit; "energy": T * logsumexp(logits / T) (the negative free energy).
export function oodScore(logits, kind, temperature = 1) {
  if (kind === "max_logit") return Math.max(...logits);
  if (kind === "energy") {
    const z = Array.from(logits, (v) => v / temperature);
    const m = Math.max(...z);
    return temperature * (m + Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0)));
  }
  return null;
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

// Mean of the class probabilities (and of the OOD score) over the last `window` frames; a label is
// claimed when the mean's largest probability reaches `threshold` and, with an OOD score, the mean
// score reaches the OOD threshold.
export class TemporalSmoother {
  constructor(window = 5, threshold = 0.6, ood = null) {
    this.window = window;
    this.threshold = threshold;
    this.ood = ood && ood.score ? ood : null;
    this.history = [];
  }

  // One frame's probabilities (and OOD score, or null) -> {label (index or null), confidence}.
  update(probs, score = null) {
    this.history.push({ probs: Float64Array.from(probs), score });
    if (this.history.length > this.window) this.history.shift();
    const n = this.history.length;
    const mean = new Float64Array(probs.length);
    for (const h of this.history) for (let i = 0; i < mean.length; i++) mean[i] += h.probs[i];
    for (let i = 0; i < mean.length; i++) mean[i] /= n;
    const k = argmax(mean), confidence = mean[k];
    let passes = true;
    if (this.ood) {
      const s = this.history.reduce((a, h) => a + h.score, 0) / n;
      passes = s >= this.ood.threshold;
    }
    return { label: confidence >= this.threshold && passes ? k : null, confidence };
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
