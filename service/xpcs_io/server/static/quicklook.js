// xpcs-io quick look: files, q-map image, G2 curves, geometry, mask versions, pool stats.
// Plain browser JavaScript: no framework, no build step, no external URLs.
// What was drawn is exposed on window.quicklook (the browser test reads it).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "xpcs-io.apiKey";
  const BOX = 480; // the q-map canvas fits in BOX x BOX pixels
  const MASK_TINT = [230, 20, 60, 0.65]; // masked pixels: blended towards red
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const UNITS = { sqmap: "sqmap_unit", dqmap: "dqmap_unit", phis: "phis_unit" };

  const state = { file: null, token: 0, qmap: null, mask: null, maskLabel: "", g2: null, bins: [] };
  const ql = (window.quicklook = { file: null, qmap: null, g2: null, geometry: null, versions: [],
    errors: [], ready: false, poolUpdates: 0, events: [], live: false, fileListUpdates: 0 });

  // ------------------------------------------------------------ msgpack (docs/wire-format.md)

  const TYPED = { b1: Uint8Array, i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array, i4: Int32Array,
    u4: Uint32Array, i8: BigInt64Array, u8: BigUint64Array, f4: Float32Array, f8: Float64Array };
  const HOST_LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  const UTF8 = new TextDecoder("utf-8", { fatal: true });

  /** Decode one msgpack value; maps {dtype, shape, data} become {dtype, shape, values}. */
  function unpack(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let pos = 0;
    const take = (n) => {
      if (n > bytes.length - pos) throw new Error("msgpack: truncated message");
      return (pos += n) - n;
    };
    const u8 = () => view.getUint8(take(1));
    const u16 = () => view.getUint16(take(2));
    const u32 = () => view.getUint32(take(4));
    const int64 = (v) => (v >= Number.MIN_SAFE_INTEGER && v <= Number.MAX_SAFE_INTEGER ? Number(v) : v);
    const bin = (n) => { const p = take(n); return bytes.subarray(p, p + n); };
    const str = (n) => UTF8.decode(bin(n));
    const count = (n) => { // each item takes at least one byte
      if (n > bytes.length - pos) throw new Error("msgpack: more items declared than bytes left");
      return n;
    };
    const list = (n, depth) => Array.from({ length: count(n) }, () => value(depth));
    const map = (n, depth) => {
      const out = Object.create(null);
      for (let i = count(n); i > 0; i--) {
        const key = value(depth);
        if (typeof key !== "string") throw new Error("msgpack: map keys must be strings");
        out[key] = value(depth);
      }
      return out;
    };
    function value(depth) {
      if (depth > 32) throw new Error("msgpack: nested more than 32 deep");
      const t = u8();
      if (t <= 0x7f) return t;
      if (t >= 0xe0) return t - 0x100;
      if (t <= 0x8f) return map(t & 0x0f, depth + 1);
      if (t <= 0x9f) return list(t & 0x0f, depth + 1);
      if (t <= 0xbf) return str(t & 0x1f);
      switch (t) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: return bin(u8());
        case 0xc5: return bin(u16());
        case 0xc6: return bin(u32());
        case 0xca: return view.getFloat32(take(4));
        case 0xcb: return view.getFloat64(take(8));
        case 0xcc: return u8();
        case 0xcd: return u16();
        case 0xce: return u32();
        case 0xcf: return int64(view.getBigUint64(take(8)));
        case 0xd0: return view.getInt8(take(1));
        case 0xd1: return view.getInt16(take(2));
        case 0xd2: return view.getInt32(take(4));
        case 0xd3: return int64(view.getBigInt64(take(8)));
        case 0xd9: return str(u8());
        case 0xda: return str(u16());
        case 0xdb: return str(u32());
        case 0xdc: return list(u16(), depth + 1);
        case 0xdd: return list(u32(), depth + 1);
        case 0xde: return map(u16(), depth + 1);
        case 0xdf: return map(u32(), depth + 1);
        default: throw new Error(`msgpack: unsupported type byte 0x${t.toString(16)}`);
      }
    }
    const out = value(0);
    if (pos !== bytes.length) throw new Error("msgpack: bytes after the value");
    return arrays(out);
  }

  const isArrayMap = (v) => v !== null && typeof v === "object" && !Array.isArray(v)
    && !(v instanceof Uint8Array) && Object.keys(v).length === 3
    && "dtype" in v && "shape" in v && "data" in v;

  function arrays(v) {
    if (isArrayMap(v)) return toTyped(v);
    if (Array.isArray(v)) return v.map(arrays);
    if (v !== null && typeof v === "object" && !(v instanceof Uint8Array)) {
      for (const k of Object.keys(v)) v[k] = arrays(v[k]);
    }
    return v;
  }

  function half(h) { // IEEE binary16 -> number
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    if (exp === 0) return sign * frac * 2 ** -24;
    if (exp === 31) return frac ? NaN : sign * Infinity;
    return sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }

  /** A typed-array view of an array map's bytes, in the byte order its dtype states. */
  function toTyped({ dtype, shape, data }) {
    const m = /^([<>|])([biuf])(\d+)$/.exec(dtype);
    const size = m ? Number(m[3]) : 0;
    if (!m || (size > 1 && m[1] === "|") || (size === 1 && m[1] !== "|"))
      throw new Error(`unsupported dtype ${dtype}`);
    const n = shape.reduce((a, b) => a * b, 1);
    if (n * size !== data.length) throw new Error(`array ${dtype} ${shape}: wrong byte count`);
    const little = m[1] !== ">";
    if (m[2] + size === "f2") {
      const dv = new DataView(data.buffer, data.byteOffset, data.length);
      return { dtype, shape, values: Float32Array.from({ length: n }, (_, i) => half(dv.getUint16(2 * i, little))) };
    }
    const Typed = TYPED[m[2] + size];
    if (!Typed) throw new Error(`unsupported dtype ${dtype}`);
    const bytes = data.slice(); // aligned copy, safe to byte-swap
    if (size > 1 && little !== HOST_LITTLE) {
      for (let i = 0; i < bytes.length; i += size) bytes.subarray(i, i + size).reverse();
    }
    return { dtype, shape, values: new Typed(bytes.buffer, 0, n) };
  }

  // ------------------------------------------------------------ HTTP

  function apiKey() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
  }

  /** GET /v1/<path>; JSON unless msgpack is asked for. Errors carry the problem's detail. */
  async function api(path, params, msgpack = false) {
    const headers = { Accept: msgpack ? "application/msgpack" : "application/json" };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const url = `/v1/${path}${params ? `?${new URLSearchParams(params)}` : ""}`;
    const res = await fetch(url, { headers }).catch((e) => {
      throw new Error(`cannot reach the server (${e.message})`);
    });
    if (!res.ok) { // problem+json: {type, title, status, detail}
      const body = await res.json().catch(() => ({}));
      const hint = res.status === 401 ? "; enter an API key at the top right" : "";
      const err = new Error(`${body.detail || body.title || res.statusText} (HTTP ${res.status})${hint}`);
      err.status = res.status;
      throw err;
    }
    return msgpack ? unpack(new Uint8Array(await res.arrayBuffer())) : res.json();
  }

  // ------------------------------------------------------------ small helpers

  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v;
      else node.setAttribute(k, v);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  };
  const fmt = (v) => {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number" || Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
  };
  const bytesText = (n) => (n >= 1 << 30 ? `${(n / 2 ** 30).toFixed(1)} GiB`
    : n >= 1 << 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`);
  const kvTable = (rows) => el("table", { class: "kv" },
    ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  const pretty = (unit) => unit.replace(/\^(-?\d)/g, (_, e) => e.replace(/./g, (ch) => SUP[ch]));
  const setContent = (id, ...nodes) => $(id).replaceChildren(...nodes.filter((n) => n !== null));
  const when = (date) => date.toLocaleString("sv-SE"); // local time as 2024-05-31 14:03:07
  const note = (text, cls = "muted") => el("p", { class: cls }, text);

  const showErrors = (messages) => {
    $("error").hidden = messages.length === 0;
    $("error").replaceChildren(...messages.map((m) => el("div", {}, m)));
  };

  // ------------------------------------------------------------ colour map

  // viridis, sampled every 0.1 (matplotlib); linearly interpolated into 256 entries.
  const VIRIDIS = [[68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142],
    [33, 145, 140], [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37]];
  const LUT = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * 10, k = Math.min(9, Math.floor(x)), f = x - k;
    for (let c = 0; c < 3; c++) LUT[3 * i + c] = Math.round(VIRIDIS[k][c] * (1 - f) + VIRIDIS[k + 1][c] * f);
  }

  function drawColorbar() {
    const c = $("colorbar"), ctx = c.getContext("2d");
    for (let x = 0; x < 256; x++) {
      ctx.fillStyle = `rgb(${LUT[3 * x]}, ${LUT[3 * x + 1]}, ${LUT[3 * x + 2]})`;
      ctx.fillRect(x, 0, 1, c.height);
    }
  }

  // ------------------------------------------------------------ q-map image

  /** Canvas pixel -> source block [r0, r1) x [c0, c1) and its centre pixel. */
  function blocks(n, N) {
    const lo = new Int32Array(N), hi = new Int32Array(N), mid = new Int32Array(N);
    for (let i = 0; i < N; i++) {
      lo[i] = Math.floor((i * n) / N);
      hi[i] = Math.max(lo[i] + 1, Math.floor(((i + 1) * n) / N));
      mid[i] = Math.min(n - 1, Math.floor(((i + 0.5) * n) / N));
    }
    return { lo, hi, mid };
  }

  function drawQmap() {
    const canvas = $("qmap-canvas");
    const name = $("map-name").value;
    const arr = state.qmap && state.qmap[name];
    if (!arr || !arr.values) {
      ql.qmap = null;
      $("qmap-info").textContent = state.qmap ? `${name} is not in this file` : "no q-map";
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      return;
    }
    const [h, w] = arr.shape;
    const vals = typeof arr.values[0] === "bigint" ? Float64Array.from(arr.values, Number) : arr.values;
    let min = Infinity, max = -Infinity;
    for (let i = 0; i < vals.length; i++) {
      const v = vals[i];
      if (v < min) min = v; // NaN fails both tests
      if (v > max) max = v;
    }
    const scale = Math.min(BOX / w, BOX / h);
    const W = Math.max(1, Math.round(w * scale)), H = Math.max(1, Math.round(h * scale));
    canvas.width = W; canvas.height = H;
    const rows = blocks(h, H), cols = blocks(w, W);
    const mask = state.mask && state.mask.shape[0] === h && state.mask.shape[1] === w
      && $("mask-toggle").checked ? state.mask.values : null;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H), px = img.data;
    const span = max > min ? max - min : 1;
    const [tr, tg, tb, ta] = MASK_TINT;
    let masked = 0;
    for (let y = 0; y < H; y++) {
      const rowBase = rows.mid[y] * w;
      for (let x = 0; x < W; x++) {
        const v = vals[rowBase + cols.mid[x]], o = 4 * (y * W + x);
        let r = 60, g = 60, b = 60;
        if (Number.isFinite(v)) {
          const k = 3 * Math.max(0, Math.min(255, Math.round(((v - min) / span) * 255)));
          r = LUT[k]; g = LUT[k + 1]; b = LUT[k + 2];
        }
        if (mask && blockMasked(mask, w, rows.lo[y], rows.hi[y], cols.lo[x], cols.hi[x])) {
          r = r * (1 - ta) + tr * ta; g = g * (1 - ta) + tg * ta; b = b * (1 - ta) + tb * ta;
          masked++;
        }
        px[o] = r; px[o + 1] = g; px[o + 2] = b; px[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    const unit = state.qmap[UNITS[name]] || "";
    $("cmin").textContent = `${fmt(min)} ${pretty(unit)}`;
    $("cmax").textContent = `${fmt(max)} ${pretty(unit)}`;
    const maskText = state.mask ? `${state.maskLabel} ${mask ? "overlaid" : "hidden"}` : "no mask";
    $("qmap-info").textContent = `${name} ${arr.dtype} ${h} × ${w}`
      + `${W < w ? ` (shown at ${W} × ${H})` : ""}; ${maskText}`;
    ql.qmap = { name, min, max, shape: [h, w], canvas: [W, H], unit, mask: mask ? state.maskLabel : null,
      maskedCanvasPixels: masked };
  }

  function blockMasked(mask, w, r0, r1, c0, c1) { // any pixel of the block masked (0)?
    for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) if (!mask[r * w + c]) return true;
    return false;
  }

  function hover(ev) {
    const name = $("map-name").value, arr = state.qmap && state.qmap[name];
    if (!arr || !arr.values) return;
    const canvas = $("qmap-canvas"), box = canvas.getBoundingClientRect();
    const [h, w] = arr.shape;
    const col = Math.min(w - 1, Math.floor(((ev.clientX - box.left) / box.width) * w));
    const row = Math.min(h - 1, Math.floor(((ev.clientY - box.top) / box.height) * h));
    if (row < 0 || col < 0) return;
    const i = row * w + col;
    const m = state.mask && state.mask.shape[1] === w ? ` · mask ${state.mask.values[i]}` : "";
    $("hover").textContent = `row ${row}, col ${col}: ${name} = ${fmt(Number(arr.values[i]))}`
      + ` ${pretty(state.qmap[UNITS[name]] || "")}${m}`;
  }

  // ------------------------------------------------------------ G2 plot

  const SUP = { "-": "⁻", 0: "⁰", 1: "¹", 2: "²", 3: "³", 4: "⁴", 5: "⁵", 6: "⁶", 7: "⁷", 8: "⁸", 9: "⁹" };
  const pow10 = (e) => `10${String(e).replace(/./g, (ch) => SUP[ch])}`;
  const colour = (bin) => PALETTE[Math.max(0, state.bins.indexOf(bin)) % PALETTE.length];

  function niceStep(span) {
    const raw = span / 5, p = 10 ** Math.floor(Math.log10(raw)), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
  }

  function drawG2() {
    const c = $("g2-canvas"), ctx = c.getContext("2d"), g = state.g2;
    const W = c.width, H = c.height, L = 64, R = 206, T = 14, B = 46; // legend in the right margin
    ctx.clearRect(0, 0, W, H);
    ctx.font = "12px system-ui, sans-serif";
    if (!g) return;
    const t = g.delay_times, bins = state.bins;
    const pos = t.filter((x) => x > 0);
    let lx0 = Math.log10(Math.min(...pos)), lx1 = Math.log10(Math.max(...pos));
    if (lx1 - lx0 < 0.3) { lx0 -= 0.3; lx1 += 0.3; }
    const padX = 0.04 * (lx1 - lx0);
    lx0 -= padX; lx1 += padX;
    // one curve per bin: [delay, g2, error] where g2 is known (JSON null = NaN on the server)
    const curves = bins.map((b) => [b, t.flatMap((x, k) => (g.g2[k][b] === null || !(x > 0) ? []
      : [[x, g.g2[k][b], g.g2_err[k][b] ?? 0]]))]);
    let y0 = Infinity, y1 = -Infinity;
    for (const [, pts] of curves) {
      for (const [, v, e] of pts) { y0 = Math.min(y0, v - e); y1 = Math.max(y1, v + e); }
    }
    if (!(y1 >= y0)) { y0 = 0.9; y1 = 1.3; }
    if (y1 - y0 < 1e-6) { y0 -= 0.01; y1 += 0.01; }
    const padY = 0.06 * (y1 - y0);
    y0 -= padY; y1 += padY;
    const X = (x) => L + ((Math.log10(x) - lx0) / (lx1 - lx0)) * (W - L - R);
    const Y = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);

    // grid, ticks and labels
    ctx.strokeStyle = "#e3e6ea"; ctx.fillStyle = "#444"; ctx.lineWidth = 1;
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    const labelMinor = lx1 - lx0 < 3;
    for (let e = Math.floor(lx0); e <= Math.ceil(lx1); e++) {
      for (let m = 1; m < 10; m++) {
        const lx = e + Math.log10(m);
        if (lx < lx0 || lx > lx1) continue;
        const x = Math.round(X(10 ** lx)) + 0.5;
        ctx.strokeStyle = m === 1 ? "#d5d9de" : "#eef0f2";
        ctx.beginPath(); ctx.moveTo(x, T); ctx.lineTo(x, H - B); ctx.stroke();
        if (m === 1) ctx.fillText(pow10(e), x, H - B + 6);
        else if (labelMinor && (m === 2 || m === 5)) ctx.fillText(`${m}·${pow10(e)}`, x, H - B + 6);
      }
    }
    const step = niceStep(y1 - y0), decimals = Math.max(0, -Math.floor(Math.log10(step)));
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let i = Math.ceil(y0 / step); i * step <= y1; i++) { // integer steps: always ends
      const y = i * step, py = Math.round(Y(y)) + 0.5;
      ctx.strokeStyle = "#e3e6ea";
      ctx.beginPath(); ctx.moveTo(L, py); ctx.lineTo(W - R, py); ctx.stroke();
      ctx.fillText(y.toFixed(decimals), L - 6, py);
    }
    ctx.strokeStyle = "#888";
    ctx.strokeRect(L + 0.5, T + 0.5, W - L - R, H - T - B);
    ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    ctx.fillText("delay τ (s)", L + (W - L - R) / 2, H - 4);
    ctx.save(); ctx.translate(14, T + (H - T - B) / 2); ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle"; ctx.fillText("g₂(q, τ)", 0, 0); ctx.restore();

    // curves: error bars, a thin line, markers
    ctx.save();
    ctx.beginPath(); ctx.rect(L, T, W - L - R, H - T - B); ctx.clip();
    ctx.lineWidth = 1;
    for (const [b, pts] of curves) {
      ctx.strokeStyle = ctx.fillStyle = colour(b);
      for (const [x, v, e] of pts) {
        if (!e) continue;
        const px = X(x), ya = Y(v + e), yb = Y(v - e);
        ctx.beginPath();
        ctx.moveTo(px, ya); ctx.lineTo(px, yb);
        ctx.moveTo(px - 3, ya); ctx.lineTo(px + 3, ya);
        ctx.moveTo(px - 3, yb); ctx.lineTo(px + 3, yb);
        ctx.stroke();
      }
      ctx.globalAlpha = 0.5;
      ctx.beginPath();
      pts.forEach(([x, v], i) => (i ? ctx.lineTo(X(x), Y(v)) : ctx.moveTo(X(x), Y(v))));
      ctx.stroke();
      ctx.globalAlpha = 1;
      for (const [x, v] of pts) {
        ctx.beginPath(); ctx.arc(X(x), Y(v), 3, 0, 2 * Math.PI); ctx.fill();
      }
    }
    ctx.restore();

    // legend beside the plot area, never over the data; phi tells apart columns sharing a q
    const shown = bins.slice(0, 20);
    ctx.textAlign = "left"; ctx.textBaseline = "middle";
    shown.forEach((b, i) => {
      const y = T + 10 + i * 17, x = W - R + 14;
      ctx.fillStyle = colour(b);
      ctx.beginPath(); ctx.arc(x, y, 4, 0, 2 * Math.PI); ctx.fill();
      ctx.fillStyle = "#333";
      ctx.fillText(legendText(g, b), x + 10, y);
    });
  }

  const short = (v) => (v === null || v === undefined ? "—" : Number(Number(v).toPrecision(3)).toString());
  const legendText = (g, b) => `q${b} = ${short(g.q_values[b])} Å⁻¹`
    + (g.phi_values ? `, φ = ${Number(g.phi_values[b]).toFixed(1)}°` : "");

  function renderBins() {
    const g = state.g2;
    setContent("bins", ...g.q_values.map((q, b) => {
      const box = el("input", { type: "checkbox", value: String(b) });
      box.checked = state.bins.includes(b);
      box.addEventListener("change", () => {
        state.bins = box.checked ? [...state.bins, b].sort((x, y) => x - y) : state.bins.filter((x) => x !== b);
        updateUrl();
        g2Drawn();
      });
      const phi = g.phi_values ? `, φ ${Number(g.phi_values[b]).toFixed(0)}°` : "";
      return el("label", { title: `q bin ${b}: q = ${fmt(q)} Å⁻¹${phi}` }, box, el("span", { class: "swatch" }),
        ` ${b}: q = ${short(q)}${phi}`);
    }));
  }

  function g2Drawn() {
    drawG2();
    for (const box of $("bins").querySelectorAll("input")) { // a selected bin's swatch: its curve colour
      box.nextElementSibling.style.background = box.checked ? colour(Number(box.value)) : "transparent";
    }
    const g = state.g2;
    $("g2-info").textContent = `${g.twotime ? "two-time G2 (this file holds two-time results only): " : ""}`
      + `${g.delay_times.length} delays × ${g.q_values.length} q bins; `
      + `${state.bins.length ? `showing ${state.bins.length}` : "tick q bins below to plot them"}`;
    ql.g2 = { bins: [...state.bins], colors: state.bins.map(colour), twotime: !!g.twotime,
      legend: state.bins.slice(0, 20).map((b) => legendText(g, b)),
      firstPoints: state.bins.map((b) => [g.delay_times[0], g.g2[0][b]]) };
  }

  // ------------------------------------------------------------ geometry, versions, pool

  const GEOMETRY = [["bcx", "beam centre x (px)"], ["bcy", "beam centre y (px)"],
    ["det_dist", "detector distance (mm)"], ["pix_dim", "pixel size (mm)"],
    ["lambda_", "wavelength (Å)"], ["shape", "detector shape (rows × cols)"],
    ["det_rotation", "detector rotation (°)"], ["incident_angle", "incident angle (°)"]];

  function renderGeometry(geo) {
    ql.geometry = geo;
    const known = new Set(GEOMETRY.map(([k]) => k));
    const rows = GEOMETRY.map(([k, label]) => [label, Array.isArray(geo[k]) ? geo[k].join(" × ") : fmt(geo[k])]);
    for (const k of Object.keys(geo)) if (!known.has(k)) rows.push([k, fmt(geo[k])]);
    setContent("geometry", kvTable(rows));
  }

  function renderVersions(versions) {
    ql.versions = versions;
    if (!versions.length) return setContent("versions", note("no masks yet"));
    const head = el("tr", {}, ...["version", "created", "writer", "description", "sha256"].map((h) => el("th", {}, h)));
    const rows = versions.map((v, i) => el("tr", i === versions.length - 1 ? { class: "newest" } : {},
      el("td", {}, `v${v.version}${i === versions.length - 1 ? " (newest)" : ""}`),
      el("td", { title: v.created }, v.created ? when(new Date(v.created)) : "—"),
      el("td", {}, v.writer || "—"),
      el("td", {}, v.description || "—"),
      el("td", { class: "mono", title: v.sha256 || "" }, (v.sha256 || "").slice(0, 12))));
    setContent("versions", el("table", { class: "list" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }

  let poolTimer = 0;
  async function refreshPool() {
    clearTimeout(poolTimer);
    try {
      const s = await api("pool/stats");
      const rows = [["hits / misses", `${s.hits} / ${s.misses}`],
        ["hit ratio", `${(100 * (s.hit_ratio || 0)).toFixed(1)} %`],
        ["open handles", `${s.pool_size} of ${s.max_pool_size}`], ["opens", s.opens],
        ["evictions", s.evictions], ["reopens on change", s.reopens_on_change], ["closes", s.closes]];
      const files = (s.open_files || []).map((f) => el("li", {}, el("span", { class: "mono" }, f.path),
        ` · ${f.accesses} reads${f.in_use ? `, ${f.in_use} in use` : ""}`));
      setContent("pool", kvTable(rows.map(([k, v]) => [k, String(v)])),
        files.length ? el("ul", { class: "open-files" }, ...files) : null);
      $("pool-age").textContent = `updated ${when(new Date()).slice(11)}`;
      ql.poolUpdates++;
    } catch (e) {
      setContent("pool", note(`pool stats: ${e.message}`, "bad"));
    } finally {
      poolTimer = setTimeout(refreshPool, 2000);
    }
  }

  // ------------------------------------------------------------ files and loading

  let fileList = [];

  const loadFiles = () => api("files").then((list) => { fileList = list; ql.fileListUpdates++; renderFiles(); },
    (e) => setContent("files", el("li", { class: "bad" }, `file list: ${e.message}`)));

  function renderFiles() {
    const filter = $("file-filter").value.trim().toLowerCase();
    const shown = fileList.filter((f) => f.path.toLowerCase().includes(filter));
    if (!shown.length) {
      return setContent("files", el("li", { class: "muted" }, fileList.length ? "no match" : "no HDF5 files"));
    }
    setContent("files", ...shown.map((f) => {
      const btn = el("button", { type: "button", title: f.path, class: f.path === state.file ? "current" : "" },
        el("span", { class: "path" }, f.path),
        el("span", { class: "meta" }, `${bytesText(f.size)} · ${when(new Date(f.mtime * 1000))}`));
      btn.addEventListener("click", () => loadFile(f.path, null));
      return el("li", {}, btn);
    }));
  }

  function updateUrl() {
    if (!state.file) return;
    const params = new URLSearchParams({ file: state.file, bins: state.bins.join(",") });
    if ($("map-name").value !== "sqmap") params.set("map", $("map-name").value);
    history.replaceState(null, "", `?${params}`.replace(/%2F/g, "/").replace(/%2C/g, ","));
  }

  async function loadFile(path, bins) {
    const token = ++state.token;
    const current = () => token === state.token;
    Object.assign(state, { file: path, qmap: null, mask: null, maskLabel: "", g2: null, bins: [] });
    Object.assign(ql, { file: path, qmap: null, g2: null, geometry: null, versions: [], errors: [], ready: false });
    $("current").textContent = path;
    document.title = `${path} · xpcs-io quick look`;
    renderFiles();
    showErrors([]);
    for (const id of ["geometry", "versions"]) setContent(id, note("loading…"));
    for (const id of ["qmap-info", "g2-info"]) $(id).textContent = "loading…";
    setContent("bins");
    setContent("g2-dl");
    drawG2();
    const q = { file_path: path };
    const errors = [];
    const fail = (what, show) => (e) => {
      errors.push(`${what}: ${e.message}`);
      if (current()) show(e);
    };

    const qmapTask = api("qmap", q, true);
    const versionsTask = api("mask/versions", q).catch((e) => (e.status === 404 ? [] : Promise.reject(e)));
    const maskTask = versionsTask.catch(() => []).then(async (versions) => {
      if (!versions.length) return null;
      const newest = versions[versions.length - 1];
      const m = await api("mask", { ...q, version: newest.version }, true);
      return { mask: m.mask, label: `mask v${newest.version}${newest.writer ? ` by ${newest.writer}` : ""}` };
    });
    const tasks = [
      Promise.all([qmapTask, maskTask.catch(() => null)]).then(([qmap, versioned]) => {
        if (!current()) return;
        state.qmap = qmap;
        state.mask = versioned ? versioned.mask : qmap.mask || null;
        state.maskLabel = versioned ? versioned.label : qmap.mask ? "q-map mask" : "";
        drawQmap();
      }).catch(fail("q-map", (e) => { drawQmap(); $("qmap-info").textContent = e.message; })),
      versionsTask.then((v) => current() && renderVersions(v))
        .catch(fail("mask versions", (e) => setContent("versions", note(e.message, "bad")))),
      maskTask.catch(fail("newest mask", () => {})),
      api("g2", q).catch((e) => (e.status === 404 && /read_twotime_g2/.test(e.message)
        ? api("g2/twotime", q).then((g) => Object.assign(g, { twotime: true })) : Promise.reject(e))).then((g) => {
        if (!current()) return;
        state.g2 = g;
        if (window.quicklookViews) window.quicklookViews.g2Downloads(g, g.twotime ? "twotime_g2" : "g2");
        const n = g.q_values.length;
        const wanted = bins ?? [...new Set([0, Math.floor(n / 3), Math.floor((2 * n) / 3)])];
        state.bins = wanted.filter((b) => Number.isInteger(b) && b >= 0 && b < n);
        renderBins();
        g2Drawn();
        updateUrl();
      }).catch(fail("G2", (e) => { $("g2-info").textContent = e.message; })),
      api("geometry", q).then((geo) => current() && renderGeometry(geo))
        .catch(fail("geometry", (e) => setContent("geometry", note(e.message, "bad")))),
      window.quicklookViews ? window.quicklookViews.load(path, current).catch(fail("results", () => {})) : null,
    ];
    await Promise.all(tasks);
    if (!current()) return;
    ql.errors = errors;
    showErrors(errors);
    ql.ready = true;
    refreshPool(); // show the reads just made
  }

  // ------------------------------------------------------------ live events (GET /v1/events)

  // fetch, not EventSource: it can send the API key in a header. The stream resumes after the
  // last event seen (Last-Event-ID), so nothing is missed across reconnects.
  let lastEventId = null;
  const later = {};
  const soon = (name, fn, ms = 150) => { // coalesce bursts (a write is several file events)
    clearTimeout(later[name]);
    later[name] = setTimeout(fn, ms);
  };

  function onEvent(type, data) {
    ql.events.push({ type, file_path: data.file_path || null, version: data.version ?? null });
    if (ql.events.length > 200) ql.events.shift();
    const mine = data.file_path && data.file_path === state.file;
    if (type === "events.reset") {
      soon("files", loadFiles);
      if (state.file) soon("file", () => loadFile(state.file, state.bins));
    } else if (type === "file.created" || type === "file.removed" || type === "file.changed") {
      soon("files", loadFiles, 300);
      if (mine && type === "file.changed") soon("file", () => loadFile(state.file, state.bins), 300);
    } else if (type === "mask.written" || type === "partition.written") {
      if (mine) soon("file", () => loadFile(state.file, state.bins));
    } else if (type === "pool.cleared") {
      refreshPool();
    }
  }

  async function listen() {
    let delay = 1000;
    for (;;) {
      try {
        const headers = { Accept: "text/event-stream" };
        const key = apiKey();
        if (key) headers.Authorization = `Bearer ${key}`;
        if (lastEventId) headers["Last-Event-ID"] = lastEventId;
        const res = await fetch("/v1/events", { headers, cache: "no-store" });
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        ql.live = true;
        $("live").textContent = "live";
        delay = 1000;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let type = "message", data = "", id = null;
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) type = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trim();
              else if (line.startsWith("id:")) id = line.slice(3).trim();
            }
            if (!data) continue; // a heartbeat or the retry hint
            if (id && (!lastEventId || BigInt(id) > BigInt(lastEventId))) lastEventId = id;
            let payload = {};
            try { payload = JSON.parse(data); } catch { /* not ours */ }
            onEvent(type, payload);
          }
        }
      } catch { /* reconnect below */ }
      ql.live = false;
      $("live").textContent = "reconnecting…";
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 30000);
    }
  }

  // ------------------------------------------------------------ start

  function start() {
    drawColorbar();
    const keyInput = $("apikey");
    keyInput.value = apiKey();
    keyInput.addEventListener("change", () => {
      try { localStorage.setItem(KEY_STORE, keyInput.value.trim()); } catch { /* private mode */ }
      loadFiles();
      if (state.file) loadFile(state.file, state.bins);
    });
    $("reload-files").addEventListener("click", loadFiles);
    $("file-filter").addEventListener("input", renderFiles);
    $("map-name").addEventListener("change", () => { drawQmap(); updateUrl(); });
    $("mask-toggle").addEventListener("change", drawQmap);
    $("qmap-canvas").addEventListener("mousemove", hover);

    const params = new URLSearchParams(location.search);
    if (params.get("map")) $("map-name").value = params.get("map");
    const bins = params.has("bins")
      ? params.get("bins").split(",").filter((s) => s.trim() !== "").map(Number) : null;
    loadFiles();
    refreshPool();
    listen();
    if (params.get("file")) loadFile(params.get("file"), bins);
  }

  window.quicklookWire = { unpack }; // the msgpack decoder, for tests and the console
  // What the result views (quicklook-views.js) share with this page.
  window.quicklookCore = { api, unpack, LUT, fmt, pretty, apiKey, kvTable, note };
  // After every deferred script has run (the result views register themselves first).
  // A deferred script runs while readyState is "interactive", before DOMContentLoaded.
  if (document.readyState !== "complete") document.addEventListener("DOMContentLoaded", start, { once: true });
  else start();
})();
