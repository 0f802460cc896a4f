// frugal serve's web page: try every served model, and look at the runs. Plain JS, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const HINTS = {
  classify: "One text per line: each gets a label with the probability of every label.",
  ner: "One text per line: entities are highlighted in the text.",
  score: "One text per line: log10-probability and perplexity of each, and of them all.",
  "fill-mask": "One text per line, each holding [MASK] where a word should be predicted.",
  completions: "A prompt: the completion streams in as it is generated.",
  chat: "A message: the model's reply streams in (rendered with its chat template).",
};
const SAMPLES = {
  classify: "a charming and moving film\ndull, slow and far too long",
  ner: "John Smith flew from Paris to Berlin for Siemens.",
  score: "the cat sat on the mat\nmat the on sat cat the",
  "fill-mask": "the movie was [MASK] .",
  completions: "Once upon a time",
  chat: "Write one sentence about the sea.",
};
let models = [];

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("#api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return `${resp.status}: ${(body.error && body.error.message) || JSON.stringify(body)}`;
  } catch (e) {
    return `${resp.status} ${resp.statusText}`;
  }
}

function showError(msg) {
  $("#output").replaceChildren(el("p", { class: "error" }, msg));
}

async function loadModels() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) {
    $("#status").textContent = resp.status === 401 ? "enter the API key above" : await errorText(resp);
    return;
  }
  models = (await resp.json()).data;
  const sel = $("#model");
  sel.replaceChildren(...models.map((m) => el("option", { value: m.id }, `${m.id} (${m.kind})`)));
  $("#status").textContent = "";
  pickModel();
}

function pickModel() {
  const m = models.find((x) => x.id === $("#model").value);
  if (!m) return;
  $("#op").replaceChildren(...m.operations.map((op) => el("option", { value: op }, op)));
  $("#model-info").textContent = m.labels ? "labels: " + m.labels.join(", ")
    : m.entity_types ? "entity types: " + m.entity_types.join(", ") : m.source;
  pickOp();
}

function pickOp() {
  const op = $("#op").value;
  $("#hint").textContent = HINTS[op] || "";
  $("#input").value = SAMPLES[op] || "";
  $("#gen-options").hidden = !(op === "completions" || op === "chat");
  $("#mask-options").hidden = op !== "fill-mask";
  $("#output").replaceChildren();
}

function lines() {
  return $("#input").value.split("\n").map((t) => t.trim()).filter((t) => t);
}

async function post(path, body) {
  const resp = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp.json();
}

function renderClassify(data) {
  return data.results.map((r) => {
    const probs = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
    return el("div", { class: "card" }, el("div", { class: "muted" }, r.text),
      el("div", { class: "label" }, r.label),
      ...probs.map(([lab, p]) => el("div", { class: "bar" }, el("span", {}, lab),
        el("div", { class: "track" }, el("div", { class: "fill", style: `width:${(100 * p).toFixed(1)}%` })),
        el("span", { class: "p" }, p.toFixed(4)))));
  });
}

function renderNer(data) {
  const types = [];
  return data.results.map((r) => {
    const p = el("p", { class: "entities" });
    let at = 0;
    for (const e of r.entities) {
      if (!types.includes(e.type)) types.push(e.type);
      p.append(r.text.slice(at, e.char_start));
      p.append(el("mark", { class: "t" + (types.indexOf(e.type) % 5), title: `${e.type} ${e.score.toFixed(3)}` },
        r.text.slice(e.char_start, e.char_end), el("span", { class: "type" }, e.type)));
      at = e.char_end;
    }
    p.append(r.text.slice(at));
    const n = r.entities.length;
    return el("div", { class: "card" }, p, el("div", { class: "muted" }, `${n} entit${n === 1 ? "y" : "ies"}`));
  });
}

function fmt(x) {
  return x === null || x === undefined ? "–" : Number(x).toPrecision(5);
}

function renderScore(data) {
  const rows = data.results.map((r) => el("tr", {}, el("td", {}, r.text), el("td", {}, fmt(r.log10_prob)),
    el("td", {}, r.tokens), el("td", {}, fmt(r.ppl)), el("td", {}, fmt(r.ppl_word))));
  const c = data.corpus;
  rows.push(el("tr", {}, el("th", {}, `all ${c.sentences}`), el("th", {}, fmt(c.log10_prob)), el("th", {}, c.tokens),
    el("th", {}, fmt(c.ppl_token)), el("th", {}, fmt(c.ppl_word))));
  return [el("div", { class: "card" }, el("div", { class: "muted" }, `${data.kind} model`),
    el("table", {}, el("tr", {}, ...["text", "log10 prob", "tokens", "ppl / token", "ppl / word"].map((h) => el("th", {}, h))),
      ...rows))];
}

function renderFill(data, texts) {
  return data.results.map((r, i) => {
    const masks = Array.isArray(r[0]) ? r : [r];
    return el("div", { class: "card" }, el("div", { class: "muted" }, texts[i]),
      ...masks.map((cands) => el("table", {}, ...cands.map((c) => el("tr", {}, el("td", {}, c.token),
        el("td", {}, c.score.toFixed(4)), el("td", { class: "muted" }, c.sequence))))));
  });
}

async function stream(op, model) {
  const max_tokens = parseInt($("#max-tokens").value, 10) || 64;
  const temperature = parseFloat($("#temperature").value) || 0;
  const text = $("#input").value;
  const body = op === "chat"
    ? { model, messages: [{ role: "user", content: text }], max_tokens, temperature, stream: true }
    : { model, prompt: text, max_tokens, temperature, stream: true };
  const path = op === "chat" ? "/v1/chat/completions" : "/v1/completions";
  const resp = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!resp.ok) throw new Error(await errorText(resp));
  const out = el("div", { id: "generation", class: "card" });
  if (op === "completions") out.append(el("span", { class: "muted" }, text));
  const gen = el("span", { id: "generated" });
  out.append(gen);
  $("#output").replaceChildren(out);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", pieces = 0, finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const payload = event.slice(6);
      if (payload === "[DONE]") continue;
      const chunk = JSON.parse(payload);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const c of chunk.choices || []) {
        const piece = op === "chat" ? (c.delta && c.delta.content) : c.text;
        if (piece) { gen.append(piece); pieces += 1; }
        if (c.finish_reason) finish = c.finish_reason;
      }
      $("#status").textContent = `streaming: ${pieces} pieces`;
    }
  }
  $("#status").textContent = `done: ${pieces} pieces, finish reason ${finish}`;
}

async function run() {
  const model = $("#model").value, op = $("#op").value;
  const button = $("#run");
  button.disabled = true;
  $("#status").textContent = "running…";
  try {
    if (op === "completions" || op === "chat") {
      await stream(op, model);
      return;
    }
    const texts = lines();
    if (!texts.length) throw new Error("type some text first");
    const t0 = performance.now();
    let nodes;
    if (op === "classify") nodes = renderClassify(await post("/v1/classify", { model, texts }));
    else if (op === "ner") nodes = renderNer(await post("/v1/ner", { model, texts }));
    else if (op === "score") nodes = renderScore(await post("/v1/score", { model, texts }));
    else nodes = renderFill(await post("/v1/fill-mask", { model, texts,
      top_k: parseInt($("#top-k").value, 10) || 5 }), texts);
    $("#output").replaceChildren(...nodes);
    $("#status").textContent = `${texts.length} text${texts.length === 1 ? "" : "s"} in ${Math.round(performance.now() - t0)} ms`;
  } catch (e) {
    showError(e.message);
    $("#status").textContent = "";
  } finally {
    button.disabled = false;
  }
}

function metricRows(obj, prefix = "") {
  const rows = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (typeof v === "number") rows.push([prefix + k, Number.isInteger(v) ? v : v.toFixed(4)]);
  }
  return rows;
}

async function loadRuns() {
  const box = $("#runs");
  const resp = await fetch("/v1/runs", { headers: headers() });
  if (!resp.ok) { box.replaceChildren(el("p", { class: "error" }, await errorText(resp))); return; }
  const runs = (await resp.json()).runs;
  if (!runs.length) { box.replaceChildren(el("p", { class: "muted" }, "no run folders here")); return; }
  box.replaceChildren(...runs.map((r) => {
    const m = r.metrics || {};
    const rows = [...metricRows(m.best, "best "), ...metricRows(m.final, "final "),
      ...["steps", "epochs", "train_seconds", "train_examples_per_s"].filter((k) => k in m).map((k) => [k, m[k]])];
    const plots = el("div", { class: "plots" });
    for (const name of r.plots) {
      const img = el("img", { alt: `${r.name} ${name}` });
      plots.append(img);
      fetch(`/v1/runs/${encodeURIComponent(r.name)}/plots/${encodeURIComponent(name)}`, { headers: headers() })
        .then((x) => x.ok ? x.blob() : null).then((b) => { if (b) img.src = URL.createObjectURL(b); });
    }
    return el("div", { class: "card run" },
      el("div", { class: "label" }, r.name + (r.served_as ? " (served)" : "")),
      el("div", { class: "muted" }, `${r.task || "?"} on ${r.model || "?"} · ${r.path}`),
      rows.length ? el("table", {}, ...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))))
        : el("p", { class: "muted" }, "no metrics.json yet"),
      plots);
  }));
}

function show(view) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.view === view);
  $("#view-try").hidden = view !== "try";
  $("#view-runs").hidden = view !== "runs";
  if (view === "runs") loadRuns();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = localStorage.getItem("frugal-api-key") || "";
  $("#api-key").addEventListener("change", () => {
    localStorage.setItem("frugal-api-key", $("#api-key").value.trim());
    loadModels();
  });
  $("#model").addEventListener("change", pickModel);
  $("#op").addEventListener("change", pickOp);
  $("#run").addEventListener("click", run);
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.view));
  loadModels();
});
