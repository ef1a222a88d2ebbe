// scratchllm explore: plain JavaScript, no build step. Every number drawn here comes from the server,
// which takes it from the model's own forward and backward pass; the page only formats and draws.
"use strict";

const $ = (id) => document.getElementById(id);
const PLOT = { displayModeBar: false, responsive: true };
const FONT = { family: "system-ui, sans-serif", size: 12, color: "#1f2430" };
// colour scales: light = little, dark = much; a diverging one (red < 0 < blue) for signed numbers
const WEIGHTS = [[0, "#f8f9ff"], [0.35, "#a5b8f3"], [1, "#1b2f8a"]];
const GRADS = [[0, "#fff9ec"], [0.45, "#f9a03f"], [1, "#a61e1e"]];
const SIGNED = [[0, "#c92a2a"], [0.5, "#f8f9fa"], [1, "#1864ab"]];
const state = { info: null, view: null, seq: 0, lastInput: 0, runTimer: null, embLoaded: false, step: null };
window.explore = { timings: [], rendered: {} };  // read by the tests and the timing benchmark
// plotly.js (4.8 MB) loads while the first numbers are fetched and the tokens and tables drawn
const plotlyReady = new Promise((resolve, reject) => {
  const tag = document.getElementById("plotly-js");
  if (window.Plotly) resolve();
  tag.addEventListener("load", resolve);
  tag.addEventListener("error", () => reject(new Error("plotly.min.js did not load: the charts cannot be drawn")));
});

// ---- helpers ---------------------------------------------------------------------------------
async function api(name, body) {
  if (body !== undefined && state.step !== null && body.step === undefined) body = { ...body, step: state.step };
  const res = await fetch("/api/" + name, body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

// a token's text with its whitespace made visible
function show(piece) {
  if (piece === null || piece === undefined) return "";
  return piece.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}
function fmt(x, d = 4) { return x === null || x === undefined ? "" : Number(x).toFixed(d); }
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function done(view) {
  window.explore.rendered[view] = (window.explore.rendered[view] || 0) + 1;
  if (state.lastInput) window.explore.timings.push({ view, ms: performance.now() - state.lastInput });
  document.body.dataset["rendered" + view[0].toUpperCase() + view.slice(1)] = window.explore.rendered[view];
}
function text() { return $("text").value; }
function layerOptions(select, n) {
  select.innerHTML = "";
  for (let i = 0; i < n; i++) select.append(el("option", { value: i, text: String(i) }));
}
function axisLabels(tokens) { return tokens.map((t, i) => `${i} ${show(t.piece)}`); }
function pieces(tokens) { return tokens.map((t) => show(t.piece)); }

// one heatmap with numeric axes (tokens may repeat; a categorical axis would merge them)
function heatmap(div, z, rows, cols, opts = {}) {
  // gaps between cells make plotly draw each cell on its own (slow for a long text): only for short ones
  const gap = opts.gap ?? (rows.length * cols.length <= 24 * 24 ? 1 : 0);
  const custom = z.map((row, i) => row.map((_, j) => [rows[i], cols[j], opts.extra ? opts.extra(i, j) : ""]));
  const trace = {
    type: "heatmap", z, customdata: custom, colorscale: opts.colorscale || WEIGHTS, zmin: opts.zmin, zmax: opts.zmax,
    zmid: opts.zmid, showscale: opts.showscale !== false, xgap: gap, ygap: gap,
    colorbar: { thickness: 10, len: 0.9, outlinewidth: 0 },
    hovertemplate: opts.hover || "%{customdata[0]} → %{customdata[1]}<br>%{z:.4f}<extra></extra>",
  };
  const xticks = opts.xticks || cols.map((c) => c.replace(/^\d+ /, ""));  // the piece; its position is in the hover
  const cell = opts.cell || 18;
  // every tick label costs the browser dearly (64 of them: ~4× the time of the whole heatmap), so a long
  // text gets a label every few tokens; each cell's hover names its tokens all the same
  const every = (n) => (n <= 24 ? 1 : Math.ceil(n / 16));
  const xs = cols.map((_, j) => j).filter((j) => j % every(cols.length) === 0);
  const ys = rows.map((_, i) => i).filter((i) => i % every(rows.length) === 0);
  const layout = {
    margin: { l: opts.left || 70, r: 10, t: opts.title ? 30 : 8, b: opts.bottom || 50 }, font: FONT,
    title: opts.title ? { text: opts.title, font: { size: 13 }, x: 0.02 } : undefined,
    height: opts.height || Math.min(760, Math.max(240, 40 + cell * rows.length + (opts.bottom || 50))),
    xaxis: { tickvals: xs, ticktext: xs.map((j) => xticks[j]), tickangle: xs.length > 12 && xs.some((j) => xticks[j].length > 3) ? -90 : 0,
             tickfont: { family: "ui-monospace, DejaVu Sans Mono, monospace", size: 11 }, automargin: true,
             title: opts.xtitle ? { text: opts.xtitle, font: { size: 11 } } : undefined },
    yaxis: { tickvals: ys, ticktext: ys.map((i) => (opts.yticks || rows)[i]), autorange: "reversed", automargin: true,
             tickfont: { family: "ui-monospace, DejaVu Sans Mono, monospace", size: 11 },
             title: opts.ytitle ? { text: opts.ytitle, font: { size: 11 } } : undefined },
    plot_bgcolor: "#ffffff",
  };
  return Plotly.react(div, [trace], layout, PLOT);
}

// ---- the page's frame ---------------------------------------------------------------------------
async function start() {
  try {
    state.info = await api("info");
  } catch (e) {
    $("model-info").textContent = "cannot reach the server: " + e.message;
    return;
  }
  const i = state.info;
  document.body.classList.add(i.decoder_only ? "gpt" : "transformer");  // which views the page offers
  const c = i.config;
  const kv = i.kv_heads !== i.heads ? ` (${i.kv_heads} key/value)` : "";
  $("model-info").textContent = i.decoder_only
    ? `${i.title} · ${i.layers} layers · ${i.heads} heads${kv} · width ${i.width} · ${i.vocab_size} tokens · context ${i.context} · ${i.parameters.toLocaleString()} parameters · ${i.checkpoint}`
    : `Transformer · ${c.n_encoder_layers}+${c.n_decoder_layers} layers · ${i.heads} heads · width ${c.d_model} · ${i.vocab_size} tokens · ${i.parameters.toLocaleString()} parameters · ${i.checkpoint}`;
  for (const s of ["attn-layer", "block-layer", "bw-layer", "tr-layer", "llama-layer"]) layerOptions($(s), i.layers);
  if (i.llama) { document.body.classList.add("llama"); layerOptions($("llama-head"), i.heads); }  // RMSNorm, RoPE, GQA, SwiGLU
  $("top-k").max = Math.min(i.vocab_size, 100);
  $("text").maxLength = i.max_chars;
  $("text").value = i.default_text;
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => select(b.dataset.view));
  if (!i.has_run) document.querySelector('[data-view="run"]').title = "no log.jsonl beside this checkpoint";
  wire();
  if (i.snapshots.length) stepBar(i.snapshots);
  select(i.decoder_only ? "next" : "translate");
}

function select(view) {
  state.view = view;
  document.body.dataset.view = view;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("active", s.id === "view-" + view);
  clearInterval(state.runTimer);
  if (view === "run") { loadRun(); state.runTimer = setInterval(loadRun, 2000); }
  else if (view === "embeddings") { if (state.embLoaded !== state.step) loadEmbeddings(); }
  else if (view === "translate") { if (state.translated !== state.step) { state.translated = state.step; translate(); } }
  else if (view === "training") loadTraining();
  else refresh();
  if (window.Plotly) for (const d of document.querySelectorAll(`#view-${view} .js-plotly-plot`)) Plotly.Plots.resize(d);
}

// the text changed, or a view opened: redraw what the open view shows
let timer = null;
function onText() {
  state.lastInput = performance.now();
  clearTimeout(timer);
  timer = setTimeout(refresh, 80);
}
async function refresh() {
  const seq = ++state.seq;
  const load = { next: loadNext, attention: loadAttention, block: loadBlock, backward: loadBackward, lens: loadLens, llama: loadLlama }[state.view];
  if (!load) return;
  try {
    await load(() => seq === state.seq);
    $("text-error").textContent = "";
  } catch (e) {
    if (seq === state.seq) $("text-error").textContent = e.message;
  }
}

function renderTokens(tokens, selected) {
  const box = $("tokens");
  box.innerHTML = "";
  tokens.forEach((t, i) => {
    const chip = el("span", { class: "token" + (i === selected ? " selected" : ""), "data-id": t.id, "data-index": i,
                              title: `position ${i}, id ${t.id}` },
                    el("span", { class: "piece", text: show(t.piece) }), el("span", { class: "id", text: t.id }));
    // in the attention view a token is a query: clicking it writes out its softmax
    if (state.view === "attention" && state.attention) chip.addEventListener("click", () => softmaxDetail(state.detailHead || 0, i));
    if (state.view === "block" && state.block) chip.addEventListener("click", () => blockTable(i));
    if (state.view === "llama") chip.addEventListener("click", () => {
      $("llama-pos").value = i;
      if (Number($("llama-key").value) > i) $("llama-key").value = i;  // a key never comes after its query
      refresh();
    });
    box.append(chip);
  });
}

function wire() {
  // another text: the Llama view goes back to its last token and key 0 (the old positions may not exist)
  $("text").addEventListener("input", () => { staleStep(); $("llama-pos").value = ""; $("llama-key").value = "0"; onText(); });
  for (const id of ["temperature", "top-k", "top-p"]) $(id).addEventListener("input", () => { sliderLabels(); refresh(); });
  sliderLabels();
  $("generate").addEventListener("click", generate);
  $("attn-layer").addEventListener("change", refresh);
  $("block-layer").addEventListener("change", refresh);
  $("bw-layer").addEventListener("change", refresh);
  $("target").addEventListener("input", staleStep);
  $("target").addEventListener("change", refresh);
  $("step").addEventListener("click", takeStep);
  for (const id of ["llama-layer", "llama-head", "llama-norm", "llama-pos", "llama-key", "llama-shift"]) $(id).addEventListener("change", refresh);
  $("translate").addEventListener("click", translate);
  $("tr-text").addEventListener("keydown", (e) => { if (e.key === "Enter") translate(); });
  $("tr-text").addEventListener("input", staleTranslation);
  $("chg-from").addEventListener("change", loadChanges);
  $("chg-to").addEventListener("change", loadChanges);
  $("nn-token").addEventListener("change", lookUp);
  $("tr-layer").addEventListener("change", translate);
  $("tr-attn").addEventListener("change", () => { $("tr-layer").value = "0"; translate(); });
}

// ---- 1. tokens and the next token ----------------------------------------------------------------
function nextTable(r) {
  const rows = [el("tr", {}, el("th", { class: "piece", text: "token" }), el("th", { text: "id" }),
                   el("th", { text: "logit" }), el("th", { text: "p (T=1)" }),
                   el("th", { text: `p (T=${fmt(r.settings.temperature, 2)})` }), el("th", { text: "p sampled" }))];
  for (const x of r.candidates) {
    const row = el("tr", { class: (x.kept ? "" : "cut") + (x.append !== null ? " clickable" : ""), "data-id": x.id, "data-p": x.p,
                           "data-p-temperature": x.p_temperature, title: x.append !== null ? "click: add this token to the text" : "" },
                   el("td", { class: "piece", text: show(x.piece) }), el("td", { text: x.id }), el("td", { text: fmt(x.logit, 3) }),
                   el("td", { text: fmt(x.p_model) }), el("td", { text: fmt(x.p_temperature) }), el("td", { text: fmt(x.p) }));
    // choosing the next token by hand: it joins the text, and the model is asked again
    if (x.append !== null) row.addEventListener("click", () => { $("text").value += x.append; onText(); });
    rows.push(row);
  }
  $("next-table").replaceChildren(...rows);
  $("next-kept").textContent = `${r.kept} of ${state.info.vocab_size} tokens can be sampled at these settings. ` +
    "Click a row to add that token to the text.";
}

function sliderLabels() {
  $("temperature-out").textContent = Number($("temperature").value).toFixed(2);
  $("top-k-out").textContent = $("top-k").value === "0" ? "off" : $("top-k").value;
  $("top-p-out").textContent = $("top-p").value === "1" ? "off" : Number($("top-p").value).toFixed(2);
}
function sampling() {
  const k = Number($("top-k").value), p = Number($("top-p").value);
  return { temperature: Number($("temperature").value), top_k: k > 0 ? k : null, top_p: p < 1 ? p : null };
}

async function loadNext(current) {
  const r = await api("next", { text: text(), ...sampling() });
  if (!current()) return;
  renderTokens(r.tokens);
  nextTable(r);
  if (!document.body.dataset.firstNumbers) document.body.dataset.firstNumbers = Math.round(performance.now());
  await plotlyReady;
  const c = r.candidates.slice().reverse();  // most likely on top of the horizontal bars
  const labels = c.map((x) => `${show(x.piece)}  (${x.id})`);
  Plotly.react("next-chart", [
    { type: "bar", orientation: "h", name: `after temperature ${fmt(r.settings.temperature, 2)}`, y: labels,
      x: c.map((x) => x.p_temperature), marker: { color: c.map((x) => (x.kept ? "#91a7ff" : "#c5cad3")) },
      hovertemplate: "%{y}: %{x:.4f} before the cut<extra></extra>" },
    { type: "bar", orientation: "h", name: "sampled from (renormalised)", y: labels, x: c.map((x) => x.p),
      marker: { color: "#3b5bdb" }, hovertemplate: "%{y}: p = %{x:.4f}<extra></extra>" },
  ], { barmode: "group", bargap: 0.25, height: 560, margin: { l: 110, r: 20, t: 36, b: 44 }, font: FONT,
       legend: { orientation: "h", x: 0, y: 1.06 }, xaxis: { title: { text: "probability" }, rangemode: "tozero" } }, PLOT);
  const after = r.tokens.slice(1);  // the loss of token t + 1, read after tokens 0..t
  const ticks = after.map((_, t) => t + 1).filter((p) => after.length <= 24 || p % Math.ceil(after.length / 16) === 0);
  Plotly.react("token-loss", [{ type: "bar", x: after.map((_, t) => t + 1), y: r.token_loss, marker: { color: "#e8590c" },
    customdata: after.map((t) => show(t.piece)), hovertemplate: "position %{x} %{customdata}: loss %{y:.4f}<extra></extra>" }],
    { height: 190, margin: { l: 60, r: 10, t: 10, b: 50 }, font: FONT, yaxis: { title: { text: "nats" }, rangemode: "tozero" },
      xaxis: { tickvals: ticks, ticktext: ticks.map((p) => show(after[p - 1].piece)), tickangle: 0,
               tickfont: { family: "ui-monospace, DejaVu Sans Mono, monospace", size: 11 } } }, PLOT);
  done("next");
}

async function generate() {
  const button = $("generate"), out = $("gen-out");
  button.disabled = true;
  out.replaceChildren(el("span", { class: "prompt", text: text() }));
  const added = el("span", { class: "new" });
  out.append(added);
  const seed = $("gen-seed").value;
  try {
    const res = await fetch("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: text(), max_new_tokens: Number($("gen-n").value), seed: seed === "" ? null : Number(seed),
                             step: state.step, ...sampling() }) });
    if (!res.ok) throw new Error((await res.json()).error);
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
        if (msg.error) throw new Error(msg.error);
        if (msg.text) added.textContent += msg.text;
      }
    }
  } catch (e) {
    out.append(el("div", { class: "error", text: e.message }));
  } finally {
    button.disabled = false;
    done("generate");
  }
}

// ---- 2. attention --------------------------------------------------------------------------------
async function loadAttention(current) {
  const layer = Number($("attn-layer").value);
  const r = await api("attention", { text: text(), layer });
  await plotlyReady;
  if (!current()) return;
  renderTokens(r.tokens);
  state.attention = r;
  const labels = axisLabels(r.tokens);
  const box = $("attn-heads");
  // the same heads again (another step, text or layer): their charts are updated in place, which
  // costs plotly a fraction of drawing new ones
  const existing = box.querySelectorAll(".head");
  const reuse = existing.length === r.weights.length;
  if (!reuse) box.replaceChildren();
  r.weights.forEach((w, h) => {
    let div = reuse ? $(`attn-${h}`) : null;
    if (div) existing[h].querySelector("h4").textContent = `layer ${layer} · head ${h}`;
    else {
      div = el("div", { class: "plot", id: `attn-${h}` });
      box.append(el("div", { class: "head" }, el("h4", { text: `layer ${layer} · head ${h}` }), div));
    }
    const z = w.map((row, i) => row.map((v, j) => (j > i && r.scores[h][i][j] === null ? null : v)));
    heatmap(div, z, labels, labels, {
      zmin: 0, zmax: 1, ytitle: "query", xtitle: "key",
      extra: (i, j) => (r.scores[h][i][j] === null ? "masked" : fmt(r.scores[h][i][j], 4)),
      hover: "query %{customdata[0]}<br>key %{customdata[1]}<br>weight %{z:.4f}<br>score q·k/√D %{customdata[2]}<extra></extra>",
    });
    if (!reuse) div.on("plotly_click", (ev) => {
      softmaxDetail(h, ev.points[0].y);
      $("attn-detail").scrollIntoView({ behavior: "smooth", block: "nearest" });
    });
  });
  const q = state.detailQuery !== undefined && state.detailQuery < r.tokens.length ? state.detailQuery : r.tokens.length - 1;
  softmaxDetail(state.detailHead !== undefined && state.detailHead < r.weights.length ? state.detailHead : 0, q);
  done("attention");
}

// one query's softmax written out: its scores, exp(score − max), and the weights the model computed
function softmaxDetail(h, q) {
  const r = state.attention;
  state.detailHead = h; state.detailQuery = q;
  const scores = r.scores[h][q], weights = r.weights[h][q];
  const keys = scores.map((s, j) => j).filter((j) => scores[j] !== null);
  const m = Math.max(...keys.map((j) => scores[j]));
  const ex = keys.map((j) => Math.exp(scores[j] - m));
  const total = ex.reduce((a, b) => a + b, 0);
  const rows = [el("tr", {}, el("th", { class: "piece", text: "key token" }), el("th", { text: "score q·k/√D" }),
                   el("th", { text: "exp(score − max)" }), el("th", { text: "÷ sum" }), el("th", { text: "weight (model)" }))];
  keys.forEach((j, n) => rows.push(el("tr", { "data-key": j, "data-weight": weights[j], "data-score": scores[j] },
    el("td", { class: "piece", text: `${j} ${show(r.tokens[j].piece)}` }), el("td", { text: fmt(scores[j]) }),
    el("td", { text: fmt(ex[n]) }), el("td", { text: fmt(ex[n] / total) }), el("td", { class: "weight", text: fmt(weights[j]) }))));
  const sum = keys.reduce((a, j) => a + weights[j], 0);
  rows.push(el("tr", {}, el("th", { class: "piece", text: "sum" }), el("th"), el("th", { text: fmt(total) }),
               el("th", { text: "1.0000" }), el("th", { text: fmt(sum) })));
  $("attn-detail").replaceChildren(
    el("h3", { text: `Layer ${r.layer}, head ${h}: the query "${show(r.tokens[q].piece)}" (position ${q})` }),
    el("div", { class: "formula", text: "weight_j = exp(score_j − max) / Σ_k exp(score_k − max); later tokens are masked (the model cannot look ahead)" }),
    el("table", { class: "numbers", id: "softmax-table" }, ...rows));
  renderTokens(r.tokens, q);
}

// ---- 3. inside a block ---------------------------------------------------------------------------
async function loadBlock(current) {
  const layer = Number($("block-layer").value);
  const r = await api("block", { text: text(), layer });
  await plotlyReady;
  if (!current()) return;
  renderTokens(r.tokens);
  const labels = axisLabels(r.tokens);
  const rows = ["entering block 0", ...r.layers.map((_, i) => `after block ${i}`)];
  const norms = [r.layers[0].norm_in, ...r.layers.map((l) => l.norm_out)];
  state.block = r;
  blockTable(state.blockToken !== undefined && state.blockToken < r.tokens.length ? state.blockToken : r.tokens.length - 1);
  heatmap("block-norms", norms, rows, labels, { colorscale: "Viridis", title: "size of the residual stream ‖x‖", left: 110, cell: 30,
    hover: "%{customdata[0]} · token %{customdata[1]}<br>‖x‖ %{z:.4f}<extra></extra>" });
  const std = r.layers.map((l) => l.ln_1_std), mean = r.layers.map((l) => l.ln_1_mean);
  heatmap("block-stats", std, r.layers.map((_, i) => `ln_1 of block ${i}`), labels, {
    colorscale: "Viridis", title: "layer norm's input: std (hover: mean)", left: 110, cell: 30,
    extra: (i, j) => fmt(mean[i][j]), hover: "%{customdata[0]} · token %{customdata[1]}<br>std %{z:.4f}<br>mean %{customdata[2]}<extra></extra>" });
  const width = r.mlp[0].length, neurons = Array.from({ length: width }, (_, j) => String(j));
  heatmap("block-gelu", r.mlp, labels, neurons, {
    colorscale: SIGNED, zmid: 0, gap: 0, title: `layer ${layer}: the MLP's ${width} activations, ${r.mlp_label}`,
    xtitle: "neuron", height: 120 + 22 * labels.length,
    hover: "token %{customdata[0]}<br>neuron %{customdata[1]}<br>value %{z:.4f}<extra></extra>" });
  done("block");
}

// one token's path through the blocks, layer by layer (click a token above to pick another)
function blockTable(t) {
  const r = state.block;
  state.blockToken = t;
  const rows = [el("tr", {}, el("th", { text: "block" }), el("th", { text: "‖x‖ in" }), el("th", { text: "ln_1 mean" }),
                   el("th", { text: "ln_1 std" }), el("th", { text: "‖x‖ after attention" }), el("th", { text: "ln_2 mean" }),
                   el("th", { text: "ln_2 std" }), el("th", { text: "‖x‖ after MLP" }))];
  r.layers.forEach((l, i) => rows.push(el("tr", {}, el("td", { text: i }), el("td", { text: fmt(l.norm_in[t]) }),
    el("td", { text: fmt(l.ln_1_mean[t]) }), el("td", { text: fmt(l.ln_1_std[t]) }), el("td", { text: fmt(l.norm_mid[t]) }),
    el("td", { text: fmt(l.ln_2_mean[t]) }), el("td", { text: fmt(l.ln_2_std[t]) }), el("td", { text: fmt(l.norm_out[t]) }))));
  $("block-table").replaceChildren(
    el("h3", { text: `The token "${show(r.tokens[t].piece)}" (position ${t}) through the blocks` }),
    el("div", { class: "formula", text: "x ← x + attention(ln_1(x));  x ← x + MLP(ln_2(x));  ln(x) = (x − mean) / std · scale + shift" }),
    el("table", { class: "numbers" }, ...rows));
  renderTokens(r.tokens, t);
}

// ---- 4. backward and one step --------------------------------------------------------------------
async function loadBackward(current) {
  const layer = Number($("bw-layer").value);
  const r = await api("backward", { text: text(), layer, target: $("target").value || null });
  await plotlyReady;
  if (!current()) return;
  renderTokens(r.tokens);
  state.backward = r;
  $("bw-loss").replaceChildren("loss ", el("b", { id: "loss-value", "data-loss": r.loss, text: fmt(r.loss, 4) }),
                               ` — target: ${r.what}`);
  const labels = axisLabels(r.tokens);
  const rows = ["embedding", ...r.grad_stream.map((_, i) => `after block ${i}`)];
  // each row on its own scale, so a small layer's pattern is not swamped by the embeddings' large gradient
  const grads = [r.grad_embedding, ...r.grad_stream];
  const scaled = grads.map((row) => { const m = Math.max(1e-30, ...row); return row.map((v) => v / m); });
  const yticks = rows.map((name, i) => `${name} (max ${Number(Math.max(...grads[i])).toPrecision(2)})`);
  heatmap("bw-stream", scaled, rows, labels, { yticks, left: 150,
    colorscale: GRADS, zmin: 0, zmax: 1, title: "‖d loss / d x‖ per layer and token (each row ÷ its largest)", cell: 30,
    extra: (i, j) => Number(grads[i][j]).toPrecision(3),
    hover: "%{customdata[0]} · token %{customdata[1]}<br>‖grad‖ %{customdata[2]}<br>%{z:.2f} of the row's largest<extra></extra>" });
  const prow = [el("tr", {}, el("th", { class: "piece", text: "parameter" }), el("th", { text: "shape" }),
                   el("th", { text: "‖grad‖" }), el("th", { text: "‖weight‖" }))];
  for (const p of r.params) prow.push(el("tr", {}, el("td", { class: "piece", text: p.name }), el("td", { text: p.shape.join("×") }),
                                          el("td", { text: Number(p.grad_norm).toPrecision(3) }), el("td", { text: fmt(p.weight_norm, 3) })));
  $("bw-params").replaceChildren(...prow);
  const box = $("bw-attn");
  box.replaceChildren();
  r.grad_attn_weights.forEach((g, h) => {
    const div = el("div", { class: "plot" });
    box.append(el("div", { class: "head" }, el("h4", { text: `layer ${layer} · head ${h}` }), div));
    const z = g.map((row, i) => row.map((v, j) => (j > i ? null : v)));
    const big = Math.max(1e-12, ...z.flat().filter((v) => v !== null).map(Math.abs));
    heatmap(div, z, labels, labels, { colorscale: SIGNED, zmin: -big, zmax: big, ytitle: "query", xtitle: "key",
      hover: "query %{customdata[0]}<br>key %{customdata[1]}<br>d loss / d weight %{z:.3g}<extra></extra>" });
  });
  done("backward");
}

// one SGD step on a copy; with the learning-rate box empty the server picks the rate from its curve
async function takeStep() {
  const out = $("step-out");
  $("step").disabled = true;
  try {
    const typed = $("lr").value.trim();
    const r = await api("step", { text: text(), lr: typed === "" ? null : Number(typed), target: $("target").value || null });
    out.dataset.for = JSON.stringify([text(), $("target").value, state.step]);
    const after = r.loss_after;
    const rows = [el("tr", {}, el("th", { text: "position" }), el("th", { class: "piece", text: "should come next" }),
                     el("th", { text: "p before" }), el("th", { text: "p after" }))];
    for (const t of r.targets) rows.push(el("tr", {}, el("td", { text: t.position }), el("td", { class: "piece", text: show(t.piece) }),
      el("td", { text: fmt(t.p_before) }), el("td", { class: t.p_after >= t.p_before ? "up" : "down", text: fmt(t.p_after) })));
    const how = r.lr_chosen ? "chosen from the curve below: the bottom of its first valley" : "as typed";
    const verdict = el("p", { id: "step-verdict", text: r.verdict });
    if (/overshoots/.test(r.verdict)) verdict.classList.add("overshoots");
    const chart = el("div", { id: "step-curve", class: "chart" });
    out.replaceChildren(
      el("div", { class: "big" }, "loss ", el("b", { id: "loss-before", "data-loss": r.loss_before, text: fmt(r.loss_before, 4) }), " → ",
         el("b", { id: "loss-after", "data-loss": after ?? "NaN", class: after !== null && after <= r.loss_before ? "up" : "down",
                   text: after === null ? "not a number" : fmt(after, 4) }),
         " after one SGD step with learning rate ", el("b", { id: "step-lr", "data-lr": r.lr, "data-chosen": r.lr_chosen, text: Number(r.lr).toPrecision(3) }),
         ` (${how}; w ← w − lr · grad, on a copy: the checkpoint is unchanged)`),
      verdict, chart, el("table", { class: "numbers" }, ...rows));
    await plotlyReady;
    stepCurve(chart, r);
  } catch (e) {
    out.replaceChildren(el("div", { class: "error", text: e.message }));
  } finally {
    $("step").disabled = false;
    done("step");
  }
}

// the loss after one step of each learning rate (log axis), the loss before it as a line, the step taken marked
function stepCurve(div, r) {
  const c = r.curve, pts = c.points;
  const ok = pts.map((p) => p.loss).filter((v) => v !== null);
  // the valley is shallow beside a wild point: the axis stops at 1.5 × the loss before (higher for the step
  // taken, up to 10 ×), and points above it are marked as off the chart
  const marked = r.loss_after !== null && r.loss_after <= 10 * c.loss_before ? r.loss_after : 0;
  const top = Math.min(Math.max(...ok, c.loss_before) * 1.05, Math.max(1.5 * c.loss_before, marked * 1.05));
  const low = Math.max(0, Math.min(...ok, c.loss_before) - 0.1 * c.loss_before);
  const lrs = pts.map((p) => p.lr);
  Plotly.react(div, [
    { type: "scatter", mode: "lines+markers", name: "loss after one step", x: lrs, y: pts.map((p) => p.loss),
      line: { color: "#3b5bdb" }, marker: { size: 6 }, hovertemplate: "lr %{x:.3g}: loss after %{y:.5f}<extra></extra>" },
    { type: "scatter", mode: "markers", name: r.lr_chosen ? "the chosen rate" : "the rate typed", x: [r.lr], y: [r.loss_after],
      marker: { size: 14, color: "#e03131", symbol: "diamond" }, hovertemplate: "this step: lr %{x:.3g}, loss %{y:.5f}<extra></extra>" },
    { type: "scatter", mode: "lines", name: `loss before the step (${fmt(c.loss_before, 4)})`, x: [lrs[0], lrs[lrs.length - 1]],
      y: [c.loss_before, c.loss_before], line: { color: "#868e96", dash: "dash" }, hoverinfo: "skip" },
  ], { height: 320, margin: { l: 70, r: 20, t: 36, b: 50 }, font: FONT, legend: { orientation: "h", x: 0, y: 1.14 },
       xaxis: { type: "log", title: { text: "learning rate (log scale)" }, exponentformat: "power" },
       yaxis: { title: { text: "loss after the step" }, range: [low, top] },
       annotations: ok.some((v) => v > top) || ok.length < pts.length ? [{ text: "points above the top (or not a number) flew off the chart",
         xref: "paper", yref: "paper", x: 1, y: 1, xanchor: "right", showarrow: false, font: { size: 11, color: "#868e96" } }] : [] }, PLOT);
}

// ---- what a Llama adds: RMSNorm, RoPE, GQA, SwiGLU -----------------------------------------------------
const FIRST = 8;  // numbers shown of each vector in the tables
function numRow(cells, attrs = {}) { return el("tr", attrs, ...cells.map((c) => el("td", { text: c }))); }
function headRow(names) { return el("tr", {}, ...names.map((n) => el("th", { text: n }))); }
function signed(x, d = 5) { return x === null || x === undefined ? "" : (x >= 0 ? "+" : "") + Number(x).toFixed(d); }
function bytes(n) { return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} KB` : `${n} bytes`; }

async function loadLlama(current) {
  const pos = $("llama-pos").value, shift = $("llama-shift").value;
  const r = await api("llama", { text: text(), layer: Number($("llama-layer").value), head: Number($("llama-head").value),
    norm: $("llama-norm").value, position: pos === "" ? null : Number(pos), key_position: Number($("llama-key").value || 0),
    shift: shift === "" ? null : Number(shift) });
  await plotlyReady;
  if (!current()) return;
  renderTokens(r.tokens, r.position);
  state.llama = r;
  const tok = `"${show(r.tokens[r.position].piece)}" (position ${r.position})`;
  // RMSNorm: x, its root mean square, x / rms, the learned scale, the output (and the model's)
  const n = r.rmsnorm, C = n.x.length, k = Math.min(FIRST, C);
  $("llama-norm-formula").textContent = `${n.name} of the token ${tok}: its input x is the residual stream (${n.input_name}), ${C} numbers. ` +
    `rms = √(mean(x²) + eps) = √(${fmt(n.mean_square, 6)} + ${+n.eps.toPrecision(4)}) = ${fmt(n.rms, 6)}; out = x / rms × weight. ` +
    `The mean ${signed(n.mean, 6)} is not subtracted (a layer norm would). Largest difference from the model: ${n.max_diff.toExponential(1)}.`;
  const nrows = [headRow(["i", "x", "x²", "x / rms", "× weight", "= out", "model's out"])];
  for (let i = 0; i < k; i++) nrows.push(numRow([i, signed(n.x[i]), fmt(n.x[i] ** 2, 5), signed(n.xhat[i]), signed(n.weight[i]),
    signed(n.out[i]), signed(n.model_out[i])], { "data-i": i }));
  if (C > k) nrows.push(el("tr", {}, el("td", { colspan: 7, class: "piece", text: `… ${C - k} more (the chart shows up to 32)` })));
  $("llama-norm-table").replaceChildren(...nrows);
  const m = Math.min(32, C), dims = Array.from({ length: m }, (_, i) => i);
  Plotly.react("llama-norm-chart", [["x", n.x, "#a5b8f3"], ["x / rms", n.xhat, "#3b5bdb"], ["out = x / rms × weight", n.model_out, "#e8590c"]]
    .map(([name, v, color]) => ({ type: "bar", name, x: dims, y: v.slice(0, m), marker: { color },
                                  hovertemplate: `${name}[%{x}] = %{y:.5f}<extra></extra>` })),
    { barmode: "group", height: 300, margin: { l: 50, r: 10, t: 36, b: 40 }, font: FONT, legend: { orientation: "h", x: 0, y: 1.15 },
      xaxis: { title: { text: `dimension (first ${m} of ${C})` } } }, PLOT);
  // RoPE: each pair's angle, q and k before and after their turn, the score at shifted positions
  const p = r.rope, h = p.head_dim / 2, kp = Math.min(FIRST, h);
  const pair = (v, i) => `(${signed(v[i], 3)}, ${signed(v[i + h], 3)})`;
  $("llama-rope-formula").textContent = `Layer ${r.layer}, query head ${p.head} (reads key/value head ${p.kv_head}), query at position ${p.q_pos}, ` +
    `key at position ${p.k_pos} "${show(r.tokens[p.k_pos].piece)}". Pair i is dimensions (i, i + ${h}), turned by the angle position × θᵢ, ` +
    `θᵢ = ${p.rope_theta}^(−2i/${p.head_dim})${p.scaling ? " (then the config's rope_scaling)" : ""}: ` +
    "(a, b) → (a·cos φ − b·sin φ, b·cos φ + a·sin φ).";
  const rrows = [headRow(["pair", "θᵢ", "q angle", "k angle", "q before", "q after", "model's q", "k before", "k after", "model's k",
                          "(m − n)·θᵢ", `q·k share at (${p.q_pos}, ${p.k_pos})`, `shifted by ${p.shift}`])];
  for (let i = 0; i < kp; i++) rrows.push(numRow([i, Number(p.theta[i]).toPrecision(4), fmt(p.q_angle[i]), fmt(p.k_angle[i]),
    pair(p.q_pre, i), pair(p.q, i), pair(p.q_model, i), pair(p.k_pre, i), pair(p.k, i), pair(p.k_model, i),
    fmt(p.q_angle[i] - p.k_angle[i]), signed(p.pair_dot[i], 6), signed(p.pair_dot_shifted[i], 6)], { "data-pair": i }));
  if (h > kp) rrows.push(el("tr", {}, el("td", { colspan: 13, class: "piece", text: `… ${h - kp} more pairs` })));
  $("llama-rope-table").replaceChildren(...rrows);
  $("llama-rope-note").textContent = `score = q·k / √${p.head_dim} = ${signed(p.score, 6)} (the model's score ${signed(p.model_score, 6)}). ` +
    "Each pair's share of q·k depends on the difference of the angles, (m − n)·θᵢ, only: shift both positions and it stays.";
  const srows = [headRow(["query position", "key position", "distance", "score q·k/√D", ""])];
  for (const row of p.rows) srows.push(numRow([row.q_pos, row.k_pos, row.distance, signed(row.score, 6), row.what],
                                               { "data-distance": row.distance, "data-score": row.score }));
  $("llama-rope-scores").replaceChildren(...srows);
  for (const tr of $("llama-rope-scores").querySelectorAll("tr")) if (tr.cells[4]) tr.cells[4].className = "piece";
  // GQA: which query heads read each key/value head, and the key/value cache it saves
  const g = r.gqa;
  const grows = [headRow(["key/value head", "query heads that read it"])];
  for (const x of g.groups) grows.push(numRow([x.kv_head, x.query_heads.join(", ")], { "data-kv": x.kv_head }));
  $("llama-gqa").replaceChildren(
    el("div", { class: "formula", text: `${g.n_head} query heads share ${g.n_kv_head} key/value heads, ${g.group_size} per group` +
      (g.group_size === 1 ? " (every head its own: plain multi-head attention)." : ".") }),
    el("table", { class: "numbers narrow", id: "llama-gqa-groups" }, ...grows),
    el("table", { class: "numbers narrow", id: "llama-gqa-cache" },
      headRow(["KV cache", "per token", `for the context (${g.context_length} tokens)`]),
      numRow([`${g.n_kv_head} key/value heads: 2 × ${g.n_layer} layers × ${g.n_kv_head} × ${g.head_dim} × ${g.bytes_per_number} bytes`,
              bytes(g.bytes_per_token), bytes(g.bytes_context)], { "data-bytes": g.bytes_per_token }),
      numRow([`one per query head: 2 × ${g.n_layer} × ${g.n_head} × ${g.head_dim} × ${g.bytes_per_number} bytes`,
              bytes(g.bytes_per_token_mha), bytes(g.bytes_context_mha)], { "data-bytes": g.bytes_per_token_mha }),
      numRow(["saved", `${g.ratio}× smaller`, bytes(g.bytes_context_mha - g.bytes_context)])));
  // SwiGLU: gate, silu(gate), up and their product for the token
  const w = r.swiglu, I = w.gate.length, ks = Math.min(FIRST, I);
  $("llama-swiglu-formula").textContent = `Layer ${r.layer}'s MLP at the token ${tok}: gate = x·W_gateᵀ, up = x·W_upᵀ (${w.x.length} → ${I} numbers each), ` +
    `silu(g) = g·σ(g), σ(g) = 1 / (1 + e^−g); the product silu(gate) × up goes through down back to ${w.x.length}. ` +
    `Largest differences from the model: silu ${w.max_diff.silu.toExponential(1)}, product ${w.max_diff.prod.toExponential(1)}.`;
  const wrows = [headRow(["j", "gate", "σ(gate)", "silu(gate)", "model's silu", "up", "silu × up", "model's product"])];
  for (let j = 0; j < ks; j++) wrows.push(numRow([j, signed(w.gate[j]), fmt(w.sigmoid[j], 5), signed(w.silu[j]), signed(w.silu_model[j]),
    signed(w.up[j]), signed(w.prod[j]), signed(w.prod_model[j])], { "data-j": j }));
  if (I > ks) wrows.push(el("tr", {}, el("td", { colspan: 8, class: "piece", text: `… ${I - ks} more (the chart shows up to 32)` })));
  $("llama-swiglu-table").replaceChildren(...wrows);
  const mi = Math.min(32, I), js = Array.from({ length: mi }, (_, j) => j);
  Plotly.react("llama-swiglu-chart", [["gate", w.gate, "#c5cad3"], ["silu(gate)", w.silu_model, "#2b8a3e"], ["up", w.up, "#a5b8f3"],
                                      ["silu(gate) × up", w.prod_model, "#e8590c"]]
    .map(([name, v, color]) => ({ type: "bar", name, x: js, y: v.slice(0, mi), marker: { color },
                                  hovertemplate: `${name}[%{x}] = %{y:.5f}<extra></extra>` })),
    { barmode: "group", height: 300, margin: { l: 50, r: 10, t: 36, b: 40 }, font: FONT, legend: { orientation: "h", x: 0, y: 1.15 },
      xaxis: { title: { text: `hidden unit (first ${mi} of ${I})` } } }, PLOT);
  done("llama");
}

// ---- 5. embeddings -----------------------------------------------------------------------------------
async function loadEmbeddings() {
  const step = state.step;
  const r = await api("embeddings", {});
  await plotlyReady;
  if (step !== state.step) return;
  state.embLoaded = step;
  const labels = r.pieces.map(show);
  const few = r.ids.length <= 400;
  Plotly.react("emb-chart", [{
    type: "scattergl", mode: few ? "markers+text" : "markers", x: r.x, y: r.y, text: labels, customdata: r.ids,
    textposition: "top center", textfont: { size: 11 }, marker: { size: 6, color: "#3b5bdb", opacity: 0.7 },
    hovertemplate: "%{text} (id %{customdata})<extra></extra>",
  }, { type: "scatter", mode: "text", x: [], y: [], text: [], textposition: "top center", hoverinfo: "skip",
       textfont: { size: 13, color: "#c92a2a" }, showlegend: false }],
  { height: 600, margin: { l: 60, r: 10, t: 30, b: 50 }, font: FONT, showlegend: false,
    title: { text: `${r.ids.length} of ${r.vocab_size} token embeddings on their two principal directions` +
                   (r.aligned ? ` at step ${r.step} (turned to follow the step before: no flips)` : ""), font: { size: 13 }, x: 0.02 },
    xaxis: { title: { text: `${r.aligned ? "axis 1" : "PC 1"} (the plane holds ${(100 * (r.explained[0] + r.explained[1])).toFixed(1)}% of the variance)` }, zeroline: false },
    yaxis: { title: { text: r.aligned ? "axis 2" : `PC 2 (${(100 * r.explained[1]).toFixed(1)}%)` }, zeroline: false } }, PLOT);
  state.emb = r;
  if (!state.embWired) { state.embWired = true; $("emb-chart").on("plotly_click", (ev) => neighbours(ev.points[0].customdata)); }
  await neighbours(state.nnId ?? r.ids[Math.min(r.ids.length - 1, 1)]);
  done("embeddings");
}

// a token typed by name: its neighbours, if the text is one token
async function lookUp() {
  $("nn-error").textContent = "";
  try {
    const t = (await api("tokens", { text: $("nn-token").value })).tokens;
    if (t.length !== 1) throw new Error(`that is ${t.length} tokens (${t.map((x) => show(x.piece)).join(" ")}): type one`);
    await neighbours(t[0].id);
  } catch (e) {
    $("nn-error").textContent = e.message;
  }
}

async function neighbours(id) {
  const r = await api("neighbours", { id });
  state.nnId = r.id;
  // the chosen token in red, its neighbours in orange, on the scatter, each labelled
  const n = document.getElementById("emb-chart").data[0].x.length, near = new Set(r.neighbours.map((x) => x.id));
  const colors = Array.from({ length: n }, (_, i) => (i === r.id ? "#e03131" : near.has(i) ? "#f59f00" : "#3b5bdb"));
  const sizes = Array.from({ length: n }, (_, i) => (i === r.id ? 12 : near.has(i) ? 9 : 6));
  Plotly.restyle("emb-chart", { "marker.color": [colors], "marker.size": [sizes] }, [0]);
  // every point is labelled when there are few; else the chosen one and its neighbours get labels
  const e = state.emb, shown = e.ids.length <= 400 ? [] : [r.id, ...r.neighbours.map((x) => x.id)].filter((i) => i < e.x.length);
  Plotly.restyle("emb-chart", { x: [shown.map((i) => e.x[i])], y: [shown.map((i) => e.y[i])],
                                text: [shown.map((i) => show(e.pieces[i]))] }, [1]);
  $("nn-title").textContent = `Nearest neighbours of "${show(r.piece)}" (id ${r.id})`;
  const rows = [el("tr", {}, el("th", { class: "piece", text: "token" }), el("th", { text: "id" }), el("th", { text: "cosine" }))];
  for (const n of r.neighbours) {
    const tr = el("tr", { class: "clickable" }, el("td", { class: "piece", text: show(n.piece) }), el("td", { text: n.id }),
                  el("td", { text: fmt(n.cosine, 3) }));
    tr.addEventListener("click", () => neighbours(n.id));
    rows.push(tr);
  }
  $("nn-table").replaceChildren(...rows);
}

// ---- 6. the run --------------------------------------------------------------------------------------
async function loadRun() {
  const r = await api("run");
  await plotlyReady;
  state.run = r;
  if (!r.path) {
    $("run-note").textContent = "No log.jsonl beside this checkpoint: open a run directory (scratchllm explore --ckpt RUN_DIR).";
    return;
  }
  if (state.runCount === r.records.length && state.runStep === state.step) return;
  state.runCount = r.records.length;
  state.runStep = state.step;
  const series = (key, kind) => {
    const rs = r.records.filter((x) => x[key] !== undefined && x[key] !== null && (!kind || !x.kind || x.kind === kind));
    return { x: rs.map((x) => x.step), y: rs.map((x) => x[key]) };
  };
  const traces = [];
  const add = (key, name, extra, kind) => { const s = series(key, kind); if (s.x.length) traces.push({ type: "scatter", mode: "lines+markers", name, ...s, ...extra }); };
  // a GPT run logs train_loss, val_loss and lr at each evaluation; a translation run also logs
  // "train" lines (the loss of recent batches) between its "epoch" lines
  const batches = r.records.some((x) => x.kind === "train");
  add("loss", "loss of recent batches", { line: { color: "#a5b8f3", width: 1 }, marker: { size: 2 } }, "train");
  add("train_loss", batches ? "train loss (epoch)" : "train loss", { line: { color: "#3b5bdb" }, marker: { size: 4 } });
  add("val_loss", "validation loss", { line: { color: "#e8590c" }, marker: { size: 5 } });
  const shapes = state.step !== null ? [stepLine(state.step)] : [];
  Plotly.react("run-chart", traces, {
    height: 420, margin: { l: 70, r: 20, t: 40, b: 50 }, font: FONT, legend: { orientation: "h", x: 0, y: 1.12 },
    xaxis: { title: { text: "step" }, automargin: true }, yaxis: { title: { text: "cross-entropy (nats per token)" }, automargin: true },
    shapes }, PLOT);
  const bleu = series("val_bleu");
  $("run-bleu").style.display = bleu.x.length ? "" : "none";
  if (bleu.x.length) Plotly.react("run-bleu", [{ type: "scatter", mode: "lines+markers", name: "validation BLEU", ...bleu,
    line: { color: "#2b8a3e" } }], { height: 220, margin: { l: 70, r: 20, t: 30, b: 50 }, font: FONT,
    title: { text: "validation BLEU (greedy translations, 0–100)", font: { size: 13 }, x: 0.02 },
    xaxis: { title: { text: "step" }, automargin: true, range: [0, Math.max(...r.records.map((x) => x.step || 0))] },
    yaxis: { title: { text: "BLEU" }, rangemode: "tozero", automargin: true } }, PLOT);
  // the learning rate at every step, from the schedule function and the run's own settings
  const lr = r.schedule || series("lr", batches ? "train" : null);
  Plotly.react("run-lr", [{ type: "scatter", mode: "lines", name: "learning rate", x: lr.steps || lr.x, y: lr.lr || lr.y,
    line: { color: "#495057" }, hovertemplate: "step %{x}: lr %{y:.3e}<extra></extra>" }],
    { height: 220, margin: { l: 70, r: 20, t: 30, b: 50 }, font: FONT,
      title: { text: "learning rate" + (r.schedule ? `: ${r.schedule.what}` : " (as logged)"), font: { size: 13 }, x: 0.02 },
      xaxis: { title: { text: "step" }, automargin: true }, yaxis: { exponentformat: "e", automargin: true, rangemode: "tozero" } }, PLOT);
  const last = r.records[r.records.length - 1] || {};
  $("run-note").textContent = `${r.records.length} lines in ${r.path}; last step ${last.step ?? "–"}. Redrawn while training adds lines.`;
  done("run");
}

// ---- 7. translation ----------------------------------------------------------------------------------
async function translate() {
  const button = $("translate");
  button.disabled = true;
  try {
    const which = $("tr-attn").value;
    const sentence = $("tr-text").value;
    const r = await api("translate", { text: sentence, beam: Number($("tr-beam").value), layer: Number($("tr-layer").value),
                                       attention: which });
    await plotlyReady;
    if ($("tr-layer").options.length !== r.layers) { layerOptions($("tr-layer"), r.layers); $("tr-layer").value = r.layer; }
    $("tr-error").textContent = "";
    $("tr-stale").textContent = "";
    $("tr-results").classList.remove("stale");
    $("tr-results").dataset.for = sentence;
    $("tr-out").replaceChildren(el("b", { id: "translation", text: r.translation || "(empty)" }),
      ` — log p = ${fmt(r.log_prob, 3)}` + (r.score !== null ? `, beam score ${fmt(r.score, 3)} (length-normalised)` : " (greedy)"));
    beamCandidates(r);
    const src = axisLabels(r.source), out = axisLabels(r.output);
    const box = $("tr-heads");
    box.replaceChildren();
    // rows × columns of each attention: cross = output × source, decoder = output × output, encoder = source × source
    const [qs, ks, what] = { cross: [out, src, "cross-attention"], decoder: [axisLabels(r.inputs), axisLabels(r.inputs), "decoder self-attention"],
                                 encoder: [src, src, "encoder self-attention"] }[r.attention];
    const stack = r.attention === "encoder" ? "encoder" : "decoder";
    r.weights.forEach((w, h) => {
      const div = el("div", { class: "plot", id: `cross-${h}` });
      box.append(el("div", { class: "head" }, el("h4", { text: `${stack} layer ${r.layer} · head ${h} · ${what}` }), div));
      heatmap(div, w, qs, ks, { zmin: 0, zmax: 1, ytitle: r.attention === "encoder" ? "source token (query)" : "output token (query)",
        xtitle: r.attention === "cross" ? "source token (key)" : "key", cell: 26,
        hover: "query %{customdata[0]}<br>key %{customdata[1]}<br>weight %{z:.4f}<extra></extra>" });
    });
    const rows = [el("tr", {}, el("th", { text: "step" }), el("th", { class: "piece", text: "chosen" }), el("th", { text: "p" }),
                     el("th", { class: "piece", text: "the five most likely (p)" }))];
    r.steps.forEach((s, t) => rows.push(el("tr", {}, el("td", { text: t + 1 }), el("td", { class: "piece", text: show(s.chosen.piece) }),
      el("td", { text: fmt(s.p_chosen, 3) }),
      el("td", { class: "piece", text: s.candidates.map((c) => `${show(c.piece)} ${fmt(c.p, 3)}`).join("   ") }))));
    $("tr-steps").replaceChildren(...rows);
  } catch (e) {
    $("tr-error").textContent = e.message;
    clearTranslation();
  } finally {
    button.disabled = false;
    done("translate");
  }
}

// every hypothesis the beam finished, ranked as the beam ranks them: log p divided by the length penalty
function beamCandidates(r) {
  const hs = r.hypotheses;
  $("tr-hyps-note").textContent = hs.length
    ? `${hs.length} finished hypotheses, best first. score = log p / lp(n), lp(n) = ((5 + n) / 6)^${r.length_penalty}, ` +
      "n counting the end token: without it longer hypotheses (more negative log-probabilities) would always lose."
    : "Greedy decoding keeps a single hypothesis; choose a beam of 2 or more to see the candidates it weighs.";
  const rows = hs.length ? [el("tr", {}, el("th", { text: "rank" }), el("th", { class: "piece", text: "hypothesis" }),
    el("th", { text: "n" }), el("th", { text: "log p" }), el("th", { text: "lp(n)" }), el("th", { text: "score" }), el("th", { text: "" }))] : [];
  hs.forEach((h, i) => rows.push(el("tr", h.chosen ? { class: "chosen" } : {}, el("td", { text: i + 1 }),
    el("td", { class: "piece text", text: h.text || "(empty)" }), el("td", { text: h.length }), el("td", { text: fmt(h.log_prob, 3) }),
    el("td", { text: fmt(h.penalty, 3) }), el("td", { class: "score", text: fmt(h.score, 3) }),
    el("td", { class: "mark", text: h.chosen ? "← chosen" : "" }))));
  $("tr-hyps").replaceChildren(...rows);
}

// ---- results that no longer match their inputs -------------------------------------------------------
// a step taken for another text, target or training step is cleared, with a word on why
function staleStep() {
  const out = $("step-out");
  if (!out.dataset.for || out.dataset.for === JSON.stringify([text(), $("target").value, state.step])) return;
  delete out.dataset.for;
  out.replaceChildren(el("div", { class: "note stale-note", text: "The text, the target or the training step changed since that step: take it again." }));
}
// a translation of another sentence is greyed out and marked; of no sentence at all, cleared
function staleTranslation() {
  const sentence = $("tr-text").value, box = $("tr-results");
  if (!sentence.trim()) { clearTranslation(); $("tr-stale").textContent = "Type a sentence to translate."; return; }
  const stale = box.dataset.for !== undefined && box.dataset.for !== sentence;
  box.classList.toggle("stale", stale);
  $("tr-stale").textContent = stale ? "The sentence changed: the results below are of the previous one. Press Translate." : "";
}
function clearTranslation() {
  for (const id of ["tr-out", "tr-hyps", "tr-heads", "tr-steps"]) $(id).replaceChildren();
  $("tr-hyps-note").textContent = "";
  delete $("tr-results").dataset.for;
  $("tr-results").classList.remove("stale");
}

// ---- the training step: a slider over the run's snapshots ----------------------------------------------
function stepLine(step) {
  return { type: "line", xref: "x", yref: "paper", x0: step, x1: step, y0: 0, y1: 1, line: { color: "#e03131", width: 2 } };
}
async function stepBar(steps) {
  document.body.classList.add("has-snapshots");
  window.explore.steps = steps;
  const slider = $("snap-slider");
  slider.max = steps.length - 1;
  slider.value = steps.length - 1;
  state.step = steps[steps.length - 1];
  $("snap-label").textContent = String(state.step);
  for (const id of ["chg-from", "chg-to"]) {
    $(id).replaceChildren(...steps.map((s) => el("option", { value: s, text: String(s) })));
  }
  $("chg-from").value = steps[0];
  $("chg-to").value = steps[steps.length - 1];
  slider.addEventListener("input", () => setStep(steps[Number(slider.value)]));
  $("snap-play").addEventListener("click", () => play(steps));
  drawStepLoss();
}
async function drawStepLoss() {
  const r = state.run || await api("run").catch(() => null);
  await plotlyReady;
  if (!r || !r.records.length) { $("snap-loss").style.display = "none"; return; }
  state.run = r;
  const pick = (key) => { const rs = r.records.filter((x) => typeof x[key] === "number" && (key !== "loss" || x.kind === "train"));
                          return { x: rs.map((x) => x.step), y: rs.map((x) => x[key]) }; };
  const traces = [["train_loss", "train loss", "#3b5bdb"], ["val_loss", "validation loss", "#e8590c"]]
    .map(([k, name, color]) => ({ type: "scatter", mode: "lines+markers", name, ...pick(k), line: { color }, marker: { size: 3 } }))
    .filter((t) => t.x.length);
  Plotly.react("snap-loss", traces, { height: 100, margin: { l: 45, r: 10, t: 4, b: 22 }, font: { ...FONT, size: 10 }, showlegend: true,
    legend: { x: 1, xanchor: "right", y: 1, bgcolor: "rgba(255,255,255,0.6)" }, xaxis: { automargin: true },
    yaxis: { title: { text: "loss" }, automargin: true },
    shapes: [stepLine(state.step)] }, PLOT);
}
function setStep(step) {
  state.step = step;
  state.lastInput = performance.now();
  $("snap-label").textContent = String(step);
  document.body.dataset.step = step;
  if (window.Plotly && $("snap-loss").data) Plotly.relayout("snap-loss", { shapes: [stepLine(step)] });
  staleStep();
  const v = state.view;
  if (v === "embeddings") loadEmbeddings();
  else if (v === "translate") { state.translated = step; translate(); }
  else if (v === "run") loadRun();
  else if (v !== "training") refresh();
}
function play(steps) {
  const button = $("snap-play");
  if (state.playing) { clearInterval(state.playing); state.playing = null; button.textContent = "▶ play"; return; }
  const slider = $("snap-slider");
  if (Number(slider.value) >= steps.length - 1) { slider.value = 0; setStep(steps[0]); }
  button.textContent = "❚❚ pause";
  state.playing = setInterval(() => {
    const k = Number(slider.value) + 1;
    if (k >= steps.length) { play(steps); return; }
    slider.value = k;
    setStep(steps[k]);
  }, 900);
}

// ---- the logit lens ------------------------------------------------------------------------------------
async function loadLens(current) {
  const sentence = state.info.decoder_only ? text() : $("tr-text").value;
  const r = await api("lens", { text: sentence });
  await plotlyReady;
  if (!current()) return;
  if (state.info.decoder_only) renderTokens(r.tokens);
  const cols = axisLabels(r.tokens);
  const tops = r.top.map((row) => row.map((t) => show(t.piece)));
  heatmap("lens-chart", r.p_top, r.rows, cols, {
    colorscale: WEIGHTS, zmin: 0, zmax: 1, left: 110, cell: 34, gap: 2, xtitle: "position (the token read)",
    extra: (i, j) => `${tops[i][j]}<br>p(final answer) ${fmt(r.p_final[i][j], 4)}`,
    hover: "%{customdata[0]} · reading %{customdata[1]}<br>top next token %{customdata[2]}<br>p(top) %{z:.4f}<extra></extra>" });
  Plotly.restyle("lens-chart", { text: [tops], texttemplate: "%{text}", textfont: { family: "ui-monospace, DejaVu Sans Mono, monospace", size: 12 } });
  // where each position's final answer first comes out on top, counted per row (hover a cell for p(final answer))
  const counts = r.rows.map((_, i) => r.first.filter((f) => f === i).length);
  $("lens-note").textContent = "The model's final answer is first the top token " +
    r.rows.map((name, i) => `${name === "embeddings" ? "at the embeddings" : name}: ${counts[i]} of ${r.tokens.length} positions`)
      .join("; ") + (r.step !== null ? ` (step ${r.step}).` : ".");
  done("lens");
}

// ---- over training: heads and parameter changes ---------------------------------------------------------
async function loadTraining() {
  if (!state.heads) state.heads = await api("heads");
  await plotlyReady;
  const r = state.heads, names = ["previous token", "induction", "entropy"], traces = [];
  const colors = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#f08c00", "#c92a2a", "#5c940d"];
  names.forEach((name, k) => {
    for (let l = 0; l < r.layers; l++) for (let h = 0; h < r.heads; h++) {
      traces.push({ type: "scatter", mode: "lines+markers", x: r.steps, y: r.scores[name].map((s) => s[l][h]),
        name: `layer ${l} head ${h}`, legendgroup: `${l}.${h}`, showlegend: k === 0, xaxis: k ? `x${k + 1}` : "x", yaxis: k ? `y${k + 1}` : "y",
        line: { color: colors[(l * r.heads + h) % colors.length], width: 1.5, dash: l % 2 ? "dot" : "solid" }, marker: { size: 4 },
        hovertemplate: `layer ${l} head ${h}<br>step %{x}<br>${name} %{y:.3f}<extra></extra>` });
    }
  });
  const axis = (k) => ({ domain: [k * 0.35, k * 0.35 + 0.28], type: "linear",
                         title: { text: "step" }, anchor: k ? `y${k + 1}` : "y" });
  Plotly.react("heads-chart", traces, {
    height: 460, margin: { l: 50, r: 10, t: 40, b: 50 }, font: FONT, legend: { orientation: "h", y: -0.2 },
    xaxis: axis(0), xaxis2: axis(1), xaxis3: axis(2),
    yaxis: { anchor: "x", rangemode: "tozero" }, yaxis2: { anchor: "x2", rangemode: "tozero" }, yaxis3: { anchor: "x3", rangemode: "tozero" },
    annotations: names.map((n, k) => ({ text: n + (n === "entropy" ? " (nats)" : ""), xref: "paper", yref: "paper",
                                        x: k * 0.35 + 0.14, y: 1.08, showarrow: false, font: { size: 13 } })) }, PLOT);
  await loadChanges();
  done("training");
}
async function loadChanges() {
  const r = await api("changes", { from: Number($("chg-from").value), to: Number($("chg-to").value), step: null });
  await plotlyReady;
  const p = r.params.slice().reverse();
  Plotly.react("chg-chart", [{ type: "bar", orientation: "h", y: p.map((x) => x.name), x: p.map((x) => x.relative),
    customdata: p.map((x) => x.change), marker: { color: "#3b5bdb" },
    hovertemplate: "%{y}<br>‖ΔW‖/‖W‖ %{x:.3g}<br>‖ΔW‖ %{customdata:.3g}<extra></extra>" }],
    { height: 120 + 22 * p.length, margin: { l: 20, r: 20, t: 30, b: 50 }, font: FONT,
      title: { text: `the ${p.length} most changed of ${r.n_params} tensors, step ${r.from} → ${r.to}`, font: { size: 13 }, x: 0.02 },
      xaxis: { title: { text: "‖W_b − W_a‖ / max(‖W_a‖, ‖W_b‖)" }, rangemode: "tozero" },
      yaxis: { automargin: true, tickfont: { family: "ui-monospace, DejaVu Sans Mono, monospace", size: 11 } } }, PLOT);
}

start();
