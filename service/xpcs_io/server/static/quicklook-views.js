// xpcs-io quick look, result views: SAXS 2-D (log colour scale, axes, colour bar with ticks),
// SAXS 1-D (log-log, stability segments), intensity vs time, two-time C2 maps, metadata, and
// downloads of what is shown (npy, CSV for curves, PNG for images).
// Loaded after quicklook.js, which calls quicklookViews.load(path, current) for each file.
// What was drawn is exposed on window.quicklook.views (the browser test reads it).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const core = window.quicklookCore; // api(), unpack(), LUT, fmt, pretty from quicklook.js
  const ql = window.quicklook;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
  const C2_SIZE = 256; // C2 maps are block-averaged by the server to at most this size
  const views = { saxs2d: null, saxs1d: null, intt: null, c2: null, metadata: null };
  ql.views = views;
  let shown = { path: null, saxs2d: null, saxs1d: null, intt: null, c2: null, c2bin: null };

  const SUP = { "-": "⁻", 0: "⁰", 1: "¹", 2: "²", 3: "³", 4: "⁴", 5: "⁵", 6: "⁶", 7: "⁷", 8: "⁸", 9: "⁹" };
  const pow10 = (e) => `10${String(e).replace(/./g, (ch) => SUP[ch])}`;
  const fmt = (v) => core.fmt(v);
  const pretty = (u) => core.pretty(u || "");
  const numbers = (a) => (a.values ? Array.from(a.values, Number) : a.flat(Infinity).map((v) => (v === null ? NaN : v)));

  // ------------------------------------------------------------ axes

  function logTicks(l0, l1) { // decades, and 2 and 5 when the span is short
    const out = [];
    for (let e = Math.floor(l0); e <= Math.ceil(l1); e++) {
      for (const m of l1 - l0 < 2.5 ? [1, 2, 5] : [1]) {
        const l = e + Math.log10(m);
        if (l >= l0 - 1e-9 && l <= l1 + 1e-9) out.push([l, m === 1 ? pow10(e) : `${m}·${pow10(e)}`]);
      }
    }
    return out;
  }

  function linTicks(v0, v1) {
    const raw = (v1 - v0) / 5 || 1, p = 10 ** Math.floor(Math.log10(raw)), m = raw / p;
    const step = (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
    const out = [];
    for (let i = Math.ceil(v0 / step); i * step <= v1 + 1e-12; i++) out.push([i * step, fmt(i * step)]);
    return out;
  }

  function range(values, log) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) {
      if (!Number.isFinite(v) || (log && v <= 0)) continue;
      const x = log ? Math.log10(v) : v;
      if (x < lo) lo = x;
      if (x > hi) hi = x;
    }
    if (!(hi >= lo)) return null;
    if (hi - lo < 1e-12) { lo -= log ? 0.5 : Math.abs(lo) * 0.05 + 1e-9; hi += log ? 0.5 : Math.abs(hi) * 0.05 + 1e-9; }
    return [lo, hi];
  }

  /** Line plot: series [{label, x, y, color, width}], legend outside the data, right. */
  function plot(canvas, series, opt) {
    const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
    const L = 70, T = 12, B = 44, R = opt.legend ? 190 : 16;
    ctx.clearRect(0, 0, W, H);
    ctx.font = "12px system-ui, sans-serif";
    const xr = range(series.flatMap((s) => s.x), opt.logx), yr = range(series.flatMap((s) => s.y), opt.logy);
    if (!xr || !yr) return null;
    const pad = (r, f) => [r[0] - f * (r[1] - r[0]), r[1] + f * (r[1] - r[0])];
    const [x0, x1] = pad(xr, 0.03), [y0, y1] = pad(yr, 0.05);
    const fx = (v) => (opt.logx ? Math.log10(v) : v), fy = (v) => (opt.logy ? Math.log10(v) : v);
    const X = (v) => L + ((fx(v) - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => H - B - ((fy(v) - y0) / (y1 - y0)) * (H - T - B);
    ctx.fillStyle = "#444"; ctx.lineWidth = 1;
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const [t, label] of opt.logx ? logTicks(x0, x1) : linTicks(x0, x1)) {
      const px = Math.round(L + ((t - x0) / (x1 - x0)) * (W - L - R)) + 0.5;
      ctx.strokeStyle = "#e3e6ea"; ctx.beginPath(); ctx.moveTo(px, T); ctx.lineTo(px, H - B); ctx.stroke();
      ctx.fillText(label, px, H - B + 5);
    }
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const [t, label] of opt.logy ? logTicks(y0, y1) : linTicks(y0, y1)) {
      const py = Math.round(H - B - ((t - y0) / (y1 - y0)) * (H - T - B)) + 0.5;
      ctx.strokeStyle = "#e3e6ea"; ctx.beginPath(); ctx.moveTo(L, py); ctx.lineTo(W - R, py); ctx.stroke();
      ctx.fillText(label, L - 5, py);
    }
    ctx.strokeStyle = "#888"; ctx.strokeRect(L + 0.5, T + 0.5, W - L - R, H - T - B);
    ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    ctx.fillText(opt.xlabel, L + (W - L - R) / 2, H - 3);
    ctx.save(); ctx.translate(12, T + (H - T - B) / 2); ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle"; ctx.fillText(opt.ylabel, 0, 0); ctx.restore();
    ctx.save(); ctx.beginPath(); ctx.rect(L, T, W - L - R, H - T - B); ctx.clip();
    for (const s of series) {
      ctx.strokeStyle = s.color; ctx.lineWidth = s.width || 1.5; ctx.beginPath();
      let open = false;
      s.x.forEach((x, i) => {
        const y = s.y[i];
        const ok = Number.isFinite(x) && Number.isFinite(y) && (!opt.logx || x > 0) && (!opt.logy || y > 0);
        if (!ok) { open = false; return; }
        if (open) ctx.lineTo(X(x), Y(y)); else ctx.moveTo(X(x), Y(y));
        open = true;
      });
      ctx.stroke();
    }
    ctx.restore();
    if (opt.legend) { // beside the plot area: never over the data
      ctx.textAlign = "left"; ctx.textBaseline = "middle";
      series.filter((s) => s.label).slice(0, 14).forEach((s, i) => {
        const y = T + 10 + i * 17, x = W - R + 12;
        ctx.fillStyle = s.color; ctx.fillRect(x, y - 2, 14, 4);
        ctx.fillStyle = "#333"; ctx.fillText(s.label, x + 20, y);
      });
    }
    return { x: opt.logx ? [10 ** x0, 10 ** x1] : [x0, x1], y: opt.logy ? [10 ** y0, 10 ** y1] : [y0, y1],
      plotArea: [L, T, W - R, H - B] };
  }

  /** Image with axes (pixel column / row) and a colour bar with ticks; log scale optional. */
  function heatmap(canvas, arr, opt) {
    const [h, w] = arr.shape, vals = numbers(arr);
    const r = range(vals, opt.log);
    const L = 56, T = 10, B = 40, CB = 86, BOX = 420;
    const scale = Math.min(BOX / w, BOX / h);
    const iw = Math.max(1, Math.round(w * scale)), ih = Math.max(1, Math.round(h * scale));
    canvas.width = L + iw + CB; canvas.height = T + ih + B;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "12px system-ui, sans-serif";
    const img = ctx.createImageData(iw, ih), px = img.data;
    const [lo, hi] = r || [0, 1], span = hi > lo ? hi - lo : 1;
    for (let y = 0; y < ih; y++) {
      const row = Math.min(h - 1, Math.floor(((y + 0.5) * h) / ih));
      for (let x = 0; x < iw; x++) {
        const v = vals[row * w + Math.min(w - 1, Math.floor(((x + 0.5) * w) / iw))], o = 4 * (y * iw + x);
        const t = opt.log ? (v > 0 ? Math.log10(v) : NaN) : v;
        let c = [60, 60, 60];
        if (Number.isFinite(t)) {
          const k = 3 * Math.max(0, Math.min(255, Math.round(((t - lo) / span) * 255)));
          c = [core.LUT[k], core.LUT[k + 1], core.LUT[k + 2]];
        }
        px[o] = c[0]; px[o + 1] = c[1]; px[o + 2] = c[2]; px[o + 3] = 255;
      }
    }
    ctx.putImageData(img, L, T);
    ctx.fillStyle = "#444"; ctx.strokeStyle = "#888";
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const [t, label] of linTicks(0, w - 1)) {
      const x = L + ((t + 0.5) / w) * iw;
      ctx.beginPath(); ctx.moveTo(x, T + ih); ctx.lineTo(x, T + ih + 4); ctx.stroke();
      ctx.fillText(label, x, T + ih + 5);
    }
    ctx.fillText(opt.xlabel || "column (pixel)", L + iw / 2, T + ih + 22);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const [t, label] of linTicks(0, h - 1)) {
      const y = T + ((t + 0.5) / h) * ih;
      ctx.beginPath(); ctx.moveTo(L - 4, y); ctx.lineTo(L, y); ctx.stroke();
      ctx.fillText(label, L - 6, y);
    }
    ctx.save(); ctx.translate(12, T + ih / 2); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center"; ctx.fillText(opt.ylabel || "row (pixel)", 0, 0); ctx.restore();
    // colour bar, ticks in data units
    const bx = L + iw + 12, bw = 14;
    for (let y = 0; y < ih; y++) {
      const k = 3 * Math.round((1 - y / Math.max(1, ih - 1)) * 255);
      ctx.fillStyle = `rgb(${core.LUT[k]}, ${core.LUT[k + 1]}, ${core.LUT[k + 2]})`;
      ctx.fillRect(bx, T + y, bw, 1);
    }
    ctx.strokeRect(bx + 0.5, T + 0.5, bw, ih);
    ctx.fillStyle = "#444"; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    const ticks = opt.log ? logTicks(lo, hi) : linTicks(lo, hi);
    for (const [t, label] of ticks) {
      const y = T + (1 - (t - lo) / span) * ih;
      ctx.beginPath(); ctx.moveTo(bx + bw, y); ctx.lineTo(bx + bw + 4, y); ctx.stroke();
      ctx.fillText(label, bx + bw + 6, y);
    }
    ctx.save(); ctx.translate(canvas.width - 6, T + ih / 2); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center"; ctx.textBaseline = "bottom";
    ctx.fillText(`${opt.quantity} (${pretty(opt.unit)})${opt.log ? ", log scale" : ""}`, 0, 0); ctx.restore();
    return { shape: [h, w], min: opt.log ? 10 ** lo : lo, max: opt.log ? 10 ** hi : hi, log: !!opt.log,
      ticks: ticks.map(([, label]) => label), image: [L, T, iw, ih] };
  }

  // ------------------------------------------------------------ downloads

  function save(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = name;
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  /** The export of a typed read (server-side encoders), as a Blob. */
  async function fetchExport(route, params, format) {
    const headers = {};
    const key = core.apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const res = await fetch(`/v1/${route}?${new URLSearchParams({ ...params, format })}`, { headers });
    if (!res.ok) throw new Error(`${route} ${format}: HTTP ${res.status}`);
    return res.blob();
  }

  function downloads(id, route, name, formats) {
    const box = $(id);
    box.replaceChildren(document.createTextNode("download: "));
    for (const f of formats) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = f.toUpperCase(); b.dataset.format = f;
      b.addEventListener("click", async () => {
        try {
          save(await fetchExport(route, { file_path: shown.path }, f), `${name}.${f}`);
        } catch (e) { box.append(` ${e.message}`); }
      });
      box.append(b, " ");
    }
  }

  const canvasPng = (id) => new Promise((ok) => $(`${id}-canvas`).toBlob(ok, "image/png"));

  function csvBlob(header, columns) {
    const rows = [header.join(",")];
    for (let i = 0; i < columns[0].length; i++) rows.push(columns.map((c) => c[i]).join(","));
    return new Blob([rows.join("\n") + "\n"], { type: "text/csv" });
  }

  // ------------------------------------------------------------ panels

  const absent = (e) => e.status === 404;
  const EIGHT_ID = ["aps8idi", "aps8idi-legacy"];
  const setInfo = (id, text, cls = "muted") => { const p = $(id); p.className = cls; p.textContent = text; };

  function drawSaxs2d(d) {
    views.saxs2d = { ...heatmap($("saxs2d-canvas"), d.image, { log: true, unit: d.unit, quantity: "intensity" }),
      unit: d.unit, dtype: d.image.dtype };
    setInfo("saxs2d-info", `${d.image.dtype} ${d.image.shape[0]} × ${d.image.shape[1]}, log colour scale, `
      + `${fmt(views.saxs2d.min)} … ${fmt(views.saxs2d.max)} ${pretty(d.unit)}`);
    downloads("saxs2d-dl", "saxs2d", "saxs_2d", ["npy", "png", "tiff", "csv"]);
  }

  function drawSaxs1d(d) {
    const q = d.q, n = q.length;
    const segs = d.intensity_segments.map((row, i) => ({ label: `segment ${i + 1}`, x: q, y: row,
      color: `hsl(${200 + (140 * i) / Math.max(1, d.intensity_segments.length - 1)}, 55%, 62%)`, width: 1 }));
    const phis = d.phi ? [...new Set(d.phi)] : [null];
    const main = phis.map((phi, k) => {
      const idx = q.map((_, i) => i).filter((i) => phi === null || d.phi[i] === phi);
      return { label: phi === null ? "mean" : `φ = ${fmt(phi)}°`, x: idx.map((i) => q[i]),
        y: idx.map((i) => (d.intensity[i] === null ? NaN : d.intensity[i])), color: PALETTE[k % PALETTE.length], width: 2 };
    });
    const axes = plot($("saxs1d-canvas"), [...segs, ...main],
      { logx: true, logy: true, legend: true, xlabel: `q (${pretty(d.q_unit)})`, ylabel: `I (${pretty(d.intensity_unit)})` });
    views.saxs1d = { n, segments: segs.length, phi: phis.filter((p) => p !== null), axes,
      legend: [...segs, ...main].map((s) => s.label) };
    setInfo("saxs1d-info", `${n} static bins, ${segs.length} stability segments${d.phi ? `, ${phis.length} φ sectors` : ""}; log-log`);
    downloads("saxs1d-dl", "saxs1d", "saxs_1d", ["csv", "npy"]);
  }

  function drawIntt(d) {
    const axes = plot($("intt-canvas"), [{ x: d.time, y: d.intensity, color: PALETTE[0], width: 1.2 }],
      { logx: false, logy: false, legend: false, xlabel: "time (s)", ylabel: `intensity (${pretty(d.unit)})` });
    views.intt = { n: d.time.length, axes, unit: d.unit };
    setInfo("intt-info", `${d.time.length} frames over ${fmt(d.time[d.time.length - 1])} s`);
    downloads("intt-dl", "intensity-time", "intensity_time", ["csv", "npy"]);
  }

  async function drawC2(path, bin, current) {
    shown.c2bin = bin;
    const arr = await core.api("c2", { file_path: path, q_idx: bin, max_size: C2_SIZE }, true);
    if (!current()) return;
    views.c2 = { bin, ...heatmap($("c2-canvas"), arr, { log: false, unit: "1", quantity: "C₂",
      xlabel: "frame t₁ (block)", ylabel: "frame t₂ (block)" }) };
    setInfo("c2-info", `two-time map of q bin ${bin}, ${arr.shape[0]} × ${arr.shape[1]} (block-averaged to ≤ ${C2_SIZE})`);
    const box = $("c2-dl");
    box.replaceChildren(document.createTextNode("download: "));
    const b = document.createElement("button");
    b.type = "button"; b.textContent = "PNG"; b.dataset.format = "png";
    b.addEventListener("click", async () => save(await canvasPng("c2"), `c2_q${bin}.png`));
    const c = document.createElement("button");
    c.type = "button"; c.textContent = "CSV"; c.dataset.format = "csv";
    c.addEventListener("click", () => {
      const [h, w] = arr.shape, rows = [];
      for (let i = 0; i < h; i++) rows.push(Array.from(arr.values.subarray(i * w, (i + 1) * w)).join(","));
      save(new Blob([rows.join("\n") + "\n"], { type: "text/csv" }), `c2_q${bin}.csv`);
    });
    box.append(b, " ", c);
  }

  function renderMetadata(meta) {
    const keys = Object.keys(meta);
    views.metadata = { keys: keys.length, layout: meta.layout, analysis: meta.analysis_type, c2: meta.c2_q_idx || [] };
    const rows = keys.filter((k) => !k.endsWith("@unit")).slice(0, 60).map((k) => {
      const unit = meta[`${k}@unit`];
      const v = Array.isArray(meta[k]) ? meta[k].map(fmt).join(", ") : fmt(meta[k]);
      return [k, unit ? `${v} ${pretty(unit)}` : v];
    });
    $("metadata").replaceChildren(core.kvTable(rows));
  }

  function clear() {
    for (const id of ["saxs2d", "saxs1d", "intt", "c2"]) {
      const c = $(`${id}-canvas`);
      c.getContext("2d").clearRect(0, 0, c.width, c.height);
      $(`${id}-dl`).replaceChildren();
      setInfo(`${id}-info`, "loading…");
    }
    $("c2-bin").replaceChildren();
    $("metadata").replaceChildren(core.note("loading…"));
    Object.assign(views, { saxs2d: null, saxs1d: null, intt: null, c2: null, metadata: null });
  }

  /** Load every result view of ``path``; errors other than "not in this file" are thrown
   * (the page shows them), missing results are noted in their panel. */
  async function load(path, current) {
    shown = { path, c2bin: null };
    clear();
    const q = { file_path: path };
    const errors = [];
    const panel = (route, id, draw, msgpack) => core.api(route, q, msgpack).then((d) => current() && draw(d))
      .catch((e) => {
        if (!current()) return;
        setInfo(`${id}-info`, absent(e) ? `not in this file: ${e.message.replace(/ \(HTTP 404\)$/, "")}` : e.message,
          absent(e) ? "muted" : "bad");
        if (!absent(e)) errors.push(`${id}: ${e.message}`);
      });
    let meta;
    try {
      meta = await core.api("metadata", q);
    } catch (e) {
      if (!current()) return;
      $("metadata").replaceChildren(core.note(e.message, "bad"));
      for (const id of ["saxs2d", "saxs1d", "intt", "c2"]) setInfo(`${id}-info`, e.message, "bad");
      if (!absent(e)) throw e;
      return;
    }
    if (!current()) return;
    renderMetadata(meta);
    if (!EIGHT_ID.includes(meta.layout)) { // nothing to ask for: no 404s in the console
      for (const id of ["saxs2d", "saxs1d", "intt", "c2"]) setInfo(`${id}-info`, `not in a ${meta.layout} file`);
      return;
    }
    const bins = meta.c2_q_idx || [];
    $("c2-bin").replaceChildren(...bins.map((b) => Object.assign(document.createElement("option"),
      { value: String(b), textContent: `q bin ${b}` })));
    await Promise.all([
      panel("saxs2d", "saxs2d", drawSaxs2d, true),
      panel("saxs1d", "saxs1d", drawSaxs1d, false),
      panel("intensity-time", "intt", drawIntt, false),
      bins.length ? drawC2(path, bins[0], current).catch((e) => {
        if (!current()) return;
        setInfo("c2-info", e.message, "bad");
        errors.push(`C2: ${e.message}`);
      }) : setInfo("c2-info", "no two-time maps in this file"),
    ]);
    if (errors.length) throw new Error(errors.join("; "));
  }

  $("c2-bin").addEventListener("change", () => {
    const path = shown.path, bin = Number($("c2-bin").value);
    drawC2(path, bin, () => shown.path === path).catch((e) => setInfo("c2-info", e.message, "bad"));
  });

  /** G2 curves as CSV (what the G2 panel shows: delays and every q column). */
  function g2Csv(g) {
    const header = ["delay_s", ...g.q_values.map((qv, k) => `g2_q${qv}A^-1${g.phi_values ? `_phi${g.phi_values[k]}deg` : ""}`)];
    const cols = [g.delay_times, ...g.q_values.map((_, k) => g.g2.map((row) => (row[k] === null ? NaN : row[k])))];
    return csvBlob(header, cols);
  }

  /** A 2-D float64 .npy file (format 1.0) of rows of numbers. */
  function npyBlob(rows) {
    const h = rows.length, w = h ? rows[0].length : 0;
    let header = `{'descr': '<f8', 'fortran_order': False, 'shape': (${h}, ${w}), }`;
    header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
    const data = new Float64Array(h * w);
    rows.forEach((row, i) => row.forEach((v, j) => { data[i * w + j] = v === null ? NaN : v; }));
    const head = new Uint8Array(10 + header.length);
    head.set([0x93, 78, 85, 77, 80, 89, 1, 0, header.length & 0xff, header.length >> 8]);
    for (let i = 0; i < header.length; i++) head[10 + i] = header.charCodeAt(i);
    if (!HOST_LITTLE) for (let i = 0; i < data.length; i++) new DataView(data.buffer).setFloat64(8 * i, data[i], true);
    return new Blob([head, data.buffer], { type: "application/x-npy" });
  }
  const HOST_LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  /** Download buttons of the G2 panel: CSV and npy of g2 (n_delay, n_q). */
  function g2Downloads(g, name) {
    const box = $("g2-dl");
    box.replaceChildren(document.createTextNode("download: "));
    for (const [f, make] of [["csv", () => g2Csv(g)], ["npy", () => npyBlob(g.g2)]]) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = f.toUpperCase(); b.dataset.format = f;
      b.addEventListener("click", () => save(make(), `${name}.${f}`));
      box.append(b, " ");
    }
  }

  window.quicklookViews = { load, fetchExport, g2Csv, g2Downloads, npyBlob, save, canvasPng };
})();
