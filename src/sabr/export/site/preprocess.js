// The training preprocessing (sabr.data.Preprocess) of one crop of an RGBA frame, bit for bit as Python
// does it: RGB -> L with Pillow's integer weights (grayscale models), Pillow's bilinear resize (its
// antialiasing filter, 22-bit fixed-point coefficients, horizontal pass then vertical), then
// x / 255 and (x - mean) / std in float32. The result is the model's input, (C, S, S) in planar order.

const PRECISION_BITS = 22;
const ONE = 2 ** PRECISION_BITS;

function bilinear(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: {bounds, kk, ksize}.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = bilinear((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

function clip8(ss) {
  const v = Math.floor(ss / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// Pillow's ImagingResample (BILINEAR) of one 8-bit plane (w x h) to (outW x outH).
export function resizePlane(plane, w, h, outW, outH) {
  let src = plane, srcW = w;
  if (outW !== w) {
    const { bounds, kk, ksize } = coefficients(w, outW);
    const tmp = new Uint8Array(outW * h);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[2 * xx], xmax = bounds[2 * xx + 1];
        let ss = ONE / 2;
        for (let x = 0; x < xmax; x++) ss += plane[y * w + x + xmin] * kk[xx * ksize + x];
        tmp[y * outW + xx] = clip8(ss);
      }
    }
    src = tmp;
    srcW = outW;
  }
  if (outH === h) return src;
  const { bounds, kk, ksize } = coefficients(h, outH);
  const out = new Uint8Array(srcW * outH);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[2 * yy], ymax = bounds[2 * yy + 1];
    for (let x = 0; x < srcW; x++) {
      let ss = ONE / 2;
      for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * srcW + x] * kk[yy * ksize + y];
      out[yy * srcW + x] = clip8(ss);
    }
  }
  return out;
}

// The crop {x, y, width, height} (already inside the frame) of an RGBA frame as 8-bit planes:
// one (Pillow's "L": (R*19595 + G*38470 + B*7471 + 0x8000) >> 16) or three (R, G, B).
export function cropPlanes(rgba, frameW, roi, channels) {
  const n = roi.width * roi.height;
  const planes = Array.from({ length: channels }, () => new Uint8Array(n));
  for (let y = 0; y < roi.height; y++) {
    for (let x = 0; x < roi.width; x++) {
      const i = 4 * ((roi.y + y) * frameW + roi.x + x), j = y * roi.width + x;
      if (channels === 1) {
        planes[0][j] = (rgba[i] * 19595 + rgba[i + 1] * 38470 + rgba[i + 2] * 7471 + 0x8000) >>> 16;
      } else {
        planes[0][j] = rgba[i]; planes[1][j] = rgba[i + 1]; planes[2][j] = rgba[i + 2];
      }
    }
  }
  return planes;
}

// The model input (Float32Array, C x S x S) of the crop `roi` of an RGBA frame `frameW` pixels wide.
// `pre` is app.json's preprocess: {image_size, channels, mean, std}.
export function preprocess(rgba, frameW, roi, pre) {
  const s = pre.image_size, c = pre.channels;
  const out = new Float32Array(c * s * s);
  const planes = cropPlanes(rgba, frameW, roi, c);
  for (let ch = 0; ch < c; ch++) {
    const same = roi.width === s && roi.height === s;
    const small = same ? planes[ch] : resizePlane(planes[ch], roi.width, roi.height, s, s);
    const m = Math.fround(pre.mean[ch]), sd = Math.fround(pre.std[ch]);
    for (let i = 0; i < s * s; i++) {
      out[ch * s * s + i] = Math.fround(Math.fround(Math.fround(small[i] / 255) - m) / sd);
    }
  }
  return out;
}

// Python's round(): halves go to the even neighbour.
function roundHalfEven(v) {
  const f = Math.floor(v), d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
}

// sabr.apps.Roi: the default centred square ROI, and clamping a box into the frame.
export function centeredRoi(w, h, fraction) {
  const side = Math.max(1, roundHalfEven(fraction * Math.min(w, h)));
  return { x: Math.floor((w - side) / 2), y: Math.floor((h - side) / 2), width: side, height: side };
}

export function clampRoi(r, w, h) {
  const width = Math.min(r.width, w), height = Math.min(r.height, h);
  return { x: Math.min(Math.max(r.x, 0), w - width), y: Math.min(Math.max(r.y, 0), h - height), width, height };
}
