// The map explorer (jobs.view): vanilla JS, no build step. The colouring below is the same
// arithmetic as jobs/reporting/view_colors.py (the reference the browser test compares canvas pixels with).
"use strict";

const PAGE = 24;
const DEFAULTS = { polarity: "both", lower: "62", upper: "99.9", layout: "overlay", opacity: "0.75", order: "asc" };

function params() { return new URLSearchParams(location.search); }
function setting(name) { const v = params().get(name); return v === null || v === "" ? (DEFAULTS[name] || "") : v; }

async function api(path, query) {
  const url = path + (query ? "?" + new URLSearchParams(query).toString() : "");
  const res = await fetch(url);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

// ---------------------------------------------------------------- colour (mirrors view_colors.py)

let LUTS = {};  // the colour scales, from the server (jobs/reporting/view_colors.py lut): one convention everywhere

function lut(polarity) { return LUTS[polarity]; }

function percentile(sorted, p) {
  const n = sorted.length;
  if (n === 0) return 0;
  const pos = (n - 1) * p / 100, i = Math.floor(pos);
  if (i >= n - 1) return sorted[n - 1];
  const a = sorted[i], b = sorted[i + 1];
  return a + (b - a) * (pos - i);
}

function colourIndices(values, polarity, lower, upper) {
  const n = values.length, s = new Float64Array(n), m = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const v = values[i] === null || !isFinite(values[i]) ? 0 : values[i];
    s[i] = polarity === "both" ? v : polarity === "positive" ? Math.max(v, 0)
      : polarity === "negative" ? Math.max(-v, 0) : Math.abs(v);
    m[i] = Math.abs(s[i]);
  }
  const sorted = Float64Array.from(m).sort();
  const lo = percentile(sorted, lower), hi = percentile(sorted, upper);
  const index = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const t = hi > lo ? Math.min(Math.max((m[i] - lo) / (hi - lo), 0), 1) : (m[i] > lo ? 1 : 0);
    const signed = Math.sign(s[i]) * t;
    index[i] = polarity === "both" ? Math.floor(128 + signed * (signed < 0 ? 128 : 127) + 0.5) : Math.floor(t * 255 + 0.5);
  }
  return { index, lo, hi };
}

function drawMap(canvas, overlay, map, polarity, lower, upper) {
  // canvas: the map itself, opaque (its pixels are the colour scale's); overlay: the same colours
  // with the clipped magnitude as alpha, laid over the image (white, i.e. nothing, stays clear).
  const { index, lo, hi } = colourIndices(map.values, polarity, lower, upper);
  const colours = lut(polarity);
  const paint = (target, alpha) => {
    target.width = map.width; target.height = map.height;
    const ctx = target.getContext("2d"), img = ctx.createImageData(map.width, map.height);
    for (let i = 0; i < index.length; i++) {
      const c = 3 * index[i];
      img.data[4 * i] = colours[c]; img.data[4 * i + 1] = colours[c + 1]; img.data[4 * i + 2] = colours[c + 2];
      img.data[4 * i + 3] = alpha(index[i]);
    }
    ctx.putImageData(img, 0, 0);
  };
  paint(canvas, () => 255);
  if (overlay) paint(overlay, k => polarity === "both" ? Math.min(255, 2 * Math.abs(k - 128)) : k);
  const signed = map.values.some(v => v !== null && v < 0);
  return { lo, hi, signed };
}

function fmt(v) { return v === null || v === undefined ? "–" : typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v); }

const MEANING = {
  both: "red: pixels whose increase raises the target logit (positive contribution); blue: lowers it (negative); white: below the low clip. A map that is never negative (e.g. max_abs, Grad-CAM) shows red only.",
  positive: "red: positive contribution to the target logit; negative values are not shown.",
  negative: "blue: negative contribution to the target logit (raising the pixel lowers it); positive values are not shown.",
  absolute: "red: magnitude of the contribution, whatever its sign.",
};

function legend(el, polarity, lower, upper, range) {
  el.innerHTML = "";
  const bar = document.createElement("canvas");
  bar.className = "scale"; bar.width = 256; bar.height = 1;
  const ctx = bar.getContext("2d"), img = ctx.createImageData(256, 1), c = lut(polarity);
  for (let i = 0; i < 256; i++) { img.data.set([c[3 * i], c[3 * i + 1], c[3 * i + 2], 255], 4 * i); }
  ctx.putImageData(img, 0, 0);
  const hi = range ? fmt(range.hi) : "p" + upper;
  const left = document.createElement("span"), right = document.createElement("span"), text = document.createElement("span");
  left.textContent = polarity === "both" ? "−" + hi : (range ? fmt(range.lo) : "p" + lower);
  right.textContent = polarity === "both" ? "+" + hi : hi;
  text.textContent = MEANING[polarity] + ` Scale: each map's magnitude clipped to its percentiles ${lower}–${upper}` +
    (range ? ` (here ${fmt(range.lo)} to ${fmt(range.hi)}).` : ".");
  el.append(left, bar, right, text);
}

// ---------------------------------------------------------------- shared page parts

// How a map is drawn: the same controls on every page whose form says data-display (added
// here, once, before the page reads its form), then the page's submit button.
const DISPLAY_CONTROLS = `
  <label>polarity<select name="polarity"><option value="both">both (signed)</option><option value="positive">positive</option><option value="negative">negative</option><option value="absolute">absolute</option></select></label>
  <label>clip low %<input name="lower" type="number" min="0" max="100" step="0.1"></label>
  <label>clip high %<input name="upper" type="number" min="0" max="100" step="0.1"></label>
  <label>show<select name="layout"><option value="overlay">map over the image, and alone</option><option value="side">image and map apart</option></select></label>
  <label>overlay opacity<input name="opacity" type="range" min="0" max="1" step="0.05" value="0.75"></label>
  <button type="submit">apply</button>`;
for (const form of document.querySelectorAll("form[data-display]")) form.insertAdjacentHTML("beforeend", DISPLAY_CONTROLS);

function fillControls(form) {
  for (const el of form.elements) {
    if (!el.name) continue;
    const v = setting(el.name);
    if (v !== "") el.value = v;
  }
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const q = params();
    for (const el of form.elements) if (el.name) { if (el.value === "") q.delete(el.name); else q.set(el.name, el.value); }
    q.delete("offset");
    location.search = q.toString();
  });
}

function addOptions(select, values, labels) {
  for (const v of values) { const o = document.createElement("option"); o.value = v; o.textContent = labels ? labels[v] : v; select.append(o); }
  const chosen = setting(select.name);
  if (chosen) select.value = chosen;
}

function mapFigure(row, mapData) {
  const polarity = setting("polarity"), lower = +setting("lower"), upper = +setting("upper");
  const img = document.createElement("img");
  img.alt = "image " + row.sample_id;
  img.src = "/api/image?" + new URLSearchParams({ sample_id: row.sample_id });
  img.onerror = () => { img.style.visibility = "hidden"; img.title = "image unavailable: is the source the run record names reachable? (--source)"; };
  const canvas = document.createElement("canvas");
  canvas.className = "map"; canvas.dataset.sample = row.sample_id; canvas.dataset.method = row.method;
  canvas.title = "the map";
  const overlay = setting("layout") === "side" ? null : document.createElement("canvas");
  const range = drawMap(canvas, overlay, mapData, polarity, lower, upper);
  const stack = document.createElement("div"); stack.className = "stack"; stack.append(img);
  if (overlay) {
    overlay.className = "overlay"; overlay.style.opacity = setting("opacity");
    overlay.title = "the map over the image"; stack.append(overlay);
  }
  const box = document.createElement("div"); box.className = "pair"; box.append(stack, canvas);
  return { box, range };
}

function getMap(row) { return api("/api/map", { method: row.method, shard_id: row.shard_id, sample_id: row.sample_id }); }

function table(rows, columns) {
  const t = document.createElement("table"), head = t.insertRow();
  for (const c of columns) { const th = document.createElement("th"); th.textContent = c; head.append(th); }
  for (const r of rows) { const tr = t.insertRow(); for (const c of columns) tr.insertCell().textContent = typeof r[c] === "object" && r[c] !== null ? JSON.stringify(r[c]) : fmt(r[c]); }
  return t;
}

function pager(total, offset, size, count) {
  document.getElementById("count").textContent = total ? `${offset + 1}–${Math.min(offset + size, total)} of ${total}` : "no rows";
  const go = to => { const q = params(); q.set("offset", to); location.search = q.toString(); };
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  prev.disabled = offset <= 0; next.disabled = offset + count >= total;
  prev.onclick = () => go(Math.max(0, offset - size)); next.onclick = () => go(offset + size);
}

// ---------------------------------------------------------------- pages

async function gallery(info) {
  // Rows are filtered and sorted for one method (by default the first; "all" pages every map);
  // each card shows its sample's maps by every method, the filtered method's first.
  const form = document.getElementById("controls");
  addOptions(form.elements.method, info.map_methods);
  addOptions(form.elements.sort, info.sortable);
  fillControls(form);
  if (!params().get("method") && info.map_methods.length) form.elements.method.value = info.map_methods[0];
  legend(document.getElementById("legend"), setting("polarity"), setting("lower"), setting("upper"), null);
  // the cluster filter (jobs.analyze's clusters, joined by sample id) where the method has an analysis
  const analysed = Object.keys(info.analyses || {});
  for (const el of document.querySelectorAll(".analysis")) el.hidden = !analysed.length;
  const q = {};
  for (const k of ["label", "target", "predicted", "correct", "cluster_class", "cluster", "sort", "order", "offset"]) if (setting(k) !== "") q[k] = setting(k);
  if (form.elements.method.value !== "*") q.method = form.elements.method.value;
  q.limit = PAGE;
  const page = await api("/api/rows", q);
  pager(page.total, +(q.offset || 0), PAGE, page.rows.length);
  if (q.cluster !== undefined) {
    const a = document.createElement("a");
    a.href = "/clusters.html?" + new URLSearchParams({ method: q.method, class: q.cluster_class });
    a.textContent = ` · cluster ${q.cluster} of ${info.analyses[q.method].by} ${q.cluster_class} (${q.method}): its mean map`;
    document.getElementById("count").append(a);
  }
  const grid = document.getElementById("gallery");
  const several = info.map_methods.length > 1;
  const cards = await Promise.all(page.rows.map(async row => {
    const others = several ? (await api("/api/sample", { sample_id: row.sample_id, shard_id: row.shard_id })).rows
      .filter(r => r.method !== row.method) : [];
    const rows = [row, ...others];
    return { row, rows, maps: await Promise.all(rows.map(getMap)) };
  }));
  for (const { row, rows, maps } of cards) {
    const card = document.createElement("div"); card.className = "card"; card.dataset.sample = row.sample_id;
    const link = document.createElement("a");
    const keep = new URLSearchParams({ sample_id: row.sample_id, shard_id: row.shard_id });
    for (const k of ["polarity", "lower", "upper", "layout", "opacity"]) if (params().get(k)) keep.set(k, params().get(k));
    link.href = "/sample.html?" + keep.toString();
    const figures = document.createElement("div"); figures.className = "figures";
    let range = null;
    rows.forEach((r, i) => {
      const fig = mapFigure(r, maps[i]);
      if (i === 0) range = fig.range;
      const name = document.createElement("div"); name.className = "method-name"; name.textContent = r.method;
      const one = document.createElement("div"); one.append(name, fig.box); figures.append(one);
    });
    const ok = row.label >= 0 ? (row.predicted === row.label ? "good" : "bad") : "";
    const caption = document.createElement("div");
    caption.innerHTML = `<b></b> · <span class="m"></span><br>label <span class="l"></span> · target <span class="t"></span> · predicted <span class="p ${ok}"></span>`;
    caption.querySelector("b").textContent = row.sample_id; caption.querySelector(".m").textContent = row.method;
    caption.querySelector(".l").textContent = fmt(row.label); caption.querySelector(".t").textContent = fmt(row.target);
    caption.querySelector(".p").textContent = fmt(row.predicted);
    const extra = document.createElement("div");
    extra.textContent = ["logit", "pruned_logit", "kept_fraction", "prediction_kept"].filter(k => row[k] !== undefined && row[k] !== null)
      .map(k => `${k} ${fmt(row[k])}`).join(" · ") + ` · scale ±${fmt(range.hi)}`;
    link.append(figures, caption, extra); card.append(link); grid.append(card);
  }
  document.body.dataset.ready = "1";
}

async function samplePage(info) {
  fillControls(document.getElementById("controls"));
  const sampleId = params().get("sample_id"), shardId = params().get("shard_id") || "";
  document.getElementById("sample-name").textContent = sampleId;
  const data = await api("/api/sample", shardId ? { sample_id: sampleId, shard_id: shardId } : { sample_id: sampleId });
  const holder = document.getElementById("methods");
  for (const row of data.rows) {
    const div = document.createElement("div"); div.className = "method"; div.dataset.method = row.method;
    const title = document.createElement("h3"); title.textContent = row.method + (row.params ? " " + row.params : "");
    const { box, range } = mapFigure(row, await getMap(row));
    const leg = document.createElement("div"); leg.className = "legend";
    legend(leg, setting("polarity"), setting("lower"), setting("upper"), range);
    div.append(title, box, leg); holder.append(div);
  }
  if (!data.rows.length) holder.textContent = "no committed map of this sample (see its errors below)";
  const cols = [...new Set(data.rows.flatMap(r => Object.keys(r)))];
  document.getElementById("details").append(table(cols.map(c => Object.assign({ detail: c }, ...data.rows.map(r => ({ [r.method]: r[c] })))),
    ["detail", ...data.rows.map(r => r.method)]));
  clusterRows(document.getElementById("sample-clusters"), (await api("/api/sample_clusters", { sample_id: sampleId })).rows);
  evaluationPanel(document.getElementById("evaluation"), await api("/api/evaluation", { methods: data.rows.map(r => r.method).join(",") }));
  document.getElementById("sample-errors").append(data.errors.length ? table(data.errors, ["method", "kind", "reason", "shard_id"]) : document.createTextNode("none"));
  history(info);
  document.body.dataset.ready = "1";
}

function galleryLink(method, cls, cluster) {
  return "/?" + new URLSearchParams({ method, cluster_class: cls, cluster }).toString();
}

function clusterRows(el, rows) {
  // the sample's cluster per analysed method, each a link to the gallery of that cluster
  if (!rows.length) { el.textContent = "no analysis holds this sample (python -m jobs.analyze OUTPUT)"; return; }
  const t = table(rows, ["method", "by", "class", "cluster", "x", "y", "sampled"]);
  rows.forEach((r, i) => {
    const cell = t.rows[i + 1].cells[3], a = document.createElement("a");
    a.href = galleryLink(r.method, r.class, r.cluster); a.textContent = `cluster ${r.cluster}: its samples`;
    cell.textContent = ""; cell.append(a);
  });
  el.append(t);
}

function evaluationPanel(el, evaluation) {
  // what jobs.perturb / jobs.sanity / jobs.roar stored under <output>/_eval/: aggregates per method
  const jobs = Object.entries(evaluation.jobs);
  const note = document.createElement("p");
  note.textContent = "Per-sample scores: none stored (the evaluation jobs write aggregates per method). " +
    (jobs.length ? "The aggregates of this sample's methods:" : "No evaluation under this output's _eval/ yet (python -m jobs.perturb --maps OUTPUT).");
  el.append(note);
  for (const [job, entry] of jobs) {
    const h = document.createElement("h3"); h.textContent = `${job} (${entry.file}, ${entry.total} rows)`;
    el.append(h, table(entry.rows, [...new Set(entry.rows.flatMap(r => Object.keys(r)))]));
    for (const n of entry.notes || []) { const p = document.createElement("p"); p.textContent = n; el.append(p); }
  }
}

async function clustersPage(info) {
  // one method and class of jobs.analyze: each cluster's size and mean map, linked to its gallery
  const form = document.getElementById("controls"), analyses = info.analyses || {};
  const methods = Object.keys(analyses);
  if (!methods.length) throw new Error("no analysis of this output yet: run python -m jobs.analyze OUTPUT (--method LABEL)");
  addOptions(form.elements.method, methods);
  const method = params().get("method") || methods[0];
  form.elements.method.value = method;
  const classes = analyses[method].classes;
  addOptions(form.elements.class, classes.map(c => String(c.class)),
    Object.fromEntries(classes.map(c => [c.class, `${analyses[method].by} ${c.class} (${c.n} maps, k = ${c.k})`])));
  fillControls(form);
  for (const k of ["polarity", "lower", "upper"]) form.elements[k].value = params().get(k) || "";  // not the gallery's defaults
  form.elements.method.onchange = () => { location.search = new URLSearchParams({ method: form.elements.method.value }).toString(); };
  const cls = params().get("class") || String(classes[0].class);
  form.elements.class.value = cls;
  const detail = await api("/api/clusters", { method, class: cls });
  const polarity = params().get("polarity") || (detail.signed ? "both" : "absolute");
  const lower = +(params().get("lower") || 0), upper = +(params().get("upper") || 100), rec = detail.record;
  document.getElementById("summary").textContent = `${method}, ${analyses[method].by} ${cls}: ${rec.n} maps ` +
    `(${rec.sampled} embedded, the rest placed by their nearest), ${rec.k} clusters, relative eigengap ${fmt(rec.gap)}` +
    " (near 0: one strategy split; near 1: groups that barely touch). Mean maps of the normalized maps, each on its own scale.";
  legend(document.getElementById("legend"), polarity, lower, upper, null);
  const holder = document.getElementById("clusters");
  detail.means.forEach((mean, k) => {
    const div = document.createElement("div"); div.className = "method cluster"; div.dataset.cluster = k;
    const title = document.createElement("h3"); title.textContent = `cluster ${k}: ${rec.sizes[k]} maps`;
    const canvas = document.createElement("canvas"); canvas.className = "map mean"; canvas.dataset.cluster = k;
    drawMap(canvas, null, mean, polarity, lower, upper);
    const box = document.createElement("div"); box.className = "pair"; box.append(canvas);
    const a = document.createElement("a"); a.className = "cluster-link"; a.href = galleryLink(method, cls, k);
    a.textContent = `its ${rec.sizes[k]} samples in the gallery`;
    div.append(title, box, a); holder.append(div);
  });
  scatter(document.getElementById("scatter"), detail);
  document.body.dataset.ready = "1";
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function scatter(el, detail) {
  // the class's 2-D embedding (jobs.analyze --layout) as SVG, a point per map, coloured by cluster
  const pts = detail.points, size = 360, pad = 8, ns = "http://www.w3.org/2000/svg";
  if (!pts.length) { el.textContent = "no points"; return; }
  const xs = pts.map(p => p.x), ys = pts.map(p => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = v => pad + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * (size - 2 * pad);
  const sy = v => size - pad - (y1 > y0 ? (v - y0) / (y1 - y0) : 0.5) * (size - 2 * pad);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", size); svg.setAttribute("height", size); svg.setAttribute("class", "scatter");
  for (const p of pts) {
    const a = document.createElementNS(ns, "a"); a.setAttribute("href", "/sample.html?" + new URLSearchParams({ sample_id: p.sample_id }));
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", sx(p.x)); c.setAttribute("cy", sy(p.y)); c.setAttribute("r", p.sampled ? 3 : 2);
    c.setAttribute("fill", PALETTE[p.cluster % PALETTE.length]); c.setAttribute("fill-opacity", "0.7");
    const title = document.createElementNS(ns, "title"); title.textContent = `${p.sample_id}: cluster ${p.cluster}`;
    c.append(title); a.append(c); svg.append(a);
  }
  const key = document.createElement("div"); key.className = "legend";
  detail.means.forEach((_, k) => { const s = document.createElement("span"); s.style.color = PALETTE[k % PALETTE.length]; s.textContent = `● cluster ${k}`; key.append(s); });
  const note = document.createElement("span");
  note.textContent = pts.length < detail.points_total ? `${pts.length} of ${detail.points_total} maps drawn (evenly spaced by sample id)` : `${pts.length} maps`;
  key.append(note);
  el.append(svg, key);
}

function history(info) {
  const runs = info.history || [];
  const cols = [...new Set(runs.flatMap(r => Object.keys(r)))];
  document.getElementById("history").append(runs.length ? table(runs, cols) : document.createTextNode("no run record"));
}

async function errorsPage(info) {
  const form = document.getElementById("controls");
  addOptions(form.elements.method, Object.keys(info.methods || {}));
  const q = {};
  for (const k of ["method", "kind", "offset"]) if (setting(k) !== "") q[k] = setting(k);
  q.limit = 50;
  const page = await api("/api/errors", q);
  addOptions(form.elements.kind, Object.keys(page.kinds), Object.fromEntries(Object.entries(page.kinds).map(([k, n]) => [k, `${k} (${n})`])));
  fillControls(form);
  pager(page.total, +(q.offset || 0), 50, page.rows.length);
  document.getElementById("errors").append(table(page.rows, ["sample_id", "method", "kind", "reason", "shard_id"]));
  document.body.dataset.ready = "1";
}

(async () => {
  try {
    const info = await api("/api/info");
    LUTS = info.luts;
    document.getElementById("output").textContent = `${info.output} · ${info.status || "no status"}`;
    const page = document.body.dataset.page;
    await ({ gallery, sample: samplePage, clusters: clustersPage, errors: errorsPage }[page])(info);
  } catch (err) {
    document.getElementById("message").textContent = String(err.message || err);
    document.body.dataset.ready = "error";
  }
})();
