// The browser's page: it asks the app's JSON endpoints and builds every element with
// createElement and textContent. Data (texts, captions, ids, file names) never goes through
// innerHTML, so markup in a text is shown as text and never runs.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  meta: null,
  triplets: { page: 0, pages: 1 },
  gallery: { page: 0, pages: 1 },
  leakage: { page: 0, pages: 1 },
  reference: null, // {image_id: ...} or {upload: ...}
  targetId: null, // the known target when the query is a dataset triplet
  previewUrl: null,
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value); // an attribute's value is never parsed as markup
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function status(message, kind = "info") {
  const bar = $("status");
  bar.textContent = message || "";
  bar.className = message ? kind : "";
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body;
  try {
    body = await response.json();
  } catch {
    body = { error: `the server answered ${response.status} without JSON` };
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const imageUrl = (id) => "/image?id=" + encodeURIComponent(id);

function thumb(id, label) {
  const img = el("img", { class: "thumb", src: imageUrl(id), alt: id, title: id, loading: "lazy", data: { imageId: id } });
  img.addEventListener("error", () => img.classList.add("missing"));
  img.addEventListener("click", () => setReference({ image_id: id }, id, imageUrl(id), null));
  return el("figure", {}, img, label ? el("figcaption", { text: label }) : null);
}

function options(select, values, keepFirst = true) {
  const first = keepFirst ? select.options[0] : null;
  select.replaceChildren(...(first ? [first] : []));
  for (const v of values) {
    const [value, label] = Array.isArray(v) ? v : [v, v];
    select.append(el("option", { value, text: label }));
  }
}

function pagerInfo(node, data, noun) {
  // An empty result says so, rather than "page 0 of 1".
  node.textContent = data.total
    ? `${data.total.toLocaleString()} ${noun} · page ${data.page + 1} of ${data.pages}`
    : `0 ${noun}: nothing matches these filters`;
}

// --- the query ---------------------------------------------------------------------------------

function setReference(reference, label, previewUrl, targetId) {
  state.reference = reference;
  state.targetId = targetId;
  const img = $("q-image");
  img.src = previewUrl;
  img.hidden = false;
  $("q-ref").textContent = label;
  $("q-target").textContent = targetId ? `known target: ${targetId}` : "";
  status(`reference: ${label}`);
}

async function upload(event) {
  const file = event.target.files[0];
  if (!file) return;
  try {
    const body = await api("/api/upload", {
      method: "POST",
      body: file,
      headers: { "X-Filename": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" },
    });
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    setReference({ upload: body.upload }, `upload: ${body.name} (${body.width} x ${body.height})`, state.previewUrl, null);
  } catch (e) {
    status(`upload refused: ${e.message}`, "error");
    event.target.value = "";
  }
}

async function search() {
  if (!state.reference) return status("pick a reference image first (click one, or upload one)", "error");
  const models = [$("q-model-a").value, $("q-model-b").value].filter((m) => m);
  const query = {
    models: [...new Set(models)],
    reference: state.reference,
    text: $("q-text").value,
    k: Number($("q-k").value),
    target_id: state.targetId,
  };
  $("q-search").disabled = true;
  status("searching ...");
  try {
    const body = await api("/api/search", { method: "POST", body: JSON.stringify(query), headers: { "Content-Type": "application/json" } });
    renderResults(body);
    showTab("results");
    status(`top ${body.k} for "${body.text}"`);
  } catch (e) {
    status(`search refused: ${e.message}`, "error");
  } finally {
    $("q-search").disabled = false;
  }
}

function renderResults(body) {
  $("r-query").textContent = `reference ${body.reference} · "${body.text}"`;
  const columns = body.results.map((r) => {
    const t = r.timings_ms;
    let target = null;
    if (r.target) target = el("p", { class: "target-info", text: `known target ${r.target.image_id}: rank ${r.target.rank} of ${r.gallery}, score ${r.target.score.toFixed(4)}` });
    else if (state.targetId) target = el("p", { class: "target-info muted", text: `known target ${state.targetId} is not in this model's gallery` });
    const items = r.items.map((item) => {
      const figure = thumb(item.image_id, `#${item.rank} · ${item.score.toFixed(4)} · ${item.image_id}`);
      const card = el("div", { class: item.is_target ? "result target" : "result", data: { imageId: item.image_id, rank: String(item.rank) } }, figure);
      if (item.is_target) card.append(el("span", { class: "badge", text: "target" }));
      return card;
    });
    return el(
      "div",
      { class: "column", data: { model: r.model } },
      el("h3", { text: r.model }),
      el("p", { class: "muted", text: `image ${t.image} ms · text + fusion ${t.text_and_fusion} ms · search ${t.search} ms (${r.gallery.toLocaleString()} images)` }),
      target,
      el("div", { class: "grid" }, ...items),
    );
  });
  $("r-columns").replaceChildren(...columns);
}

// --- the explorer ------------------------------------------------------------------------------

function tripletParams() {
  const p = new URLSearchParams();
  for (const [name, id] of [["dataset", "f-dataset"], ["category", "f-category"], ["source", "f-source"], ["sort", "f-sort"]]) {
    if ($(id).value) p.set(name, $(id).value);
  }
  if ($("f-sort").value) p.set("order", $("f-order").value);
  if ($("f-words").value.trim()) p.set("q", $("f-words").value.trim());
  if ($("f-flagged").checked) p.set("flagged", "1");
  const score = $("f-score").value;
  if (score && $("f-min").value !== "") p.set(`min_${score}`, $("f-min").value);
  if (score && $("f-max").value !== "") p.set(`max_${score}`, $("f-max").value);
  p.set("page", String(state.triplets.page));
  p.set("size", "50");
  return p;
}

function tripletCard(r) {
  const datasets = Object.fromEntries(state.meta.triplets.datasets.map((d) => [d.name, d.label]));
  const scores = Object.entries(r.scores)
    .filter(([, v]) => v !== null)
    .map(([k, v]) => el("span", { class: "chip", title: state.meta.triplets.scores[k]?.definition, text: `${k} ${v}` }));
  const flags = r.flags.map((f) => el("span", { class: "chip flag", text: f }));
  const use = el("button", { type: "button", class: "use", text: "search this triplet" });
  use.addEventListener("click", () => {
    setReference({ image_id: r.reference_id }, r.reference_id, imageUrl(r.reference_id), r.target_id);
    $("q-text").value = r.text || "";
  });
  return el(
    "div",
    { class: "triplet", data: { row: String(r.row), dataset: r.dataset } },
    el("div", { class: "pair" }, thumb(r.reference_id, "reference"), thumb(r.target_id, "target")),
    el(
      "div",
      {},
      el("p", { class: "text", text: r.text || "" }),
      r.reference_caption ? el("p", { class: "caption", text: `reference: ${r.reference_caption}` }) : null,
      r.target_caption ? el("p", { class: "caption", text: `target: ${r.target_caption}` }) : null,
      el("p", { class: "meta", text: [datasets[r.dataset] || r.dataset, r.source, r.category, r.split].filter((x) => x).join(" · ") }),
      el("div", {}, ...scores, ...flags),
      use,
    ),
  );
}

async function loadTriplets() {
  try {
    const data = await api("/api/triplets?" + tripletParams());
    state.triplets.pages = data.pages;
    pagerInfo($("t-info"), data, "triplets");
    $("triplets").replaceChildren(...data.rows.map(tripletCard));
  } catch (e) {
    status(e.message, "error");
  }
}

// --- the gallery and the leakage pairs -----------------------------------------------------------

async function loadGallery() {
  const p = new URLSearchParams();
  for (const [name, id] of [["model", "g-model"], ["source", "g-source"], ["category", "g-category"], ["split", "g-split"], ["q", "g-q"]]) {
    if ($(id).value) p.set(name, $(id).value);
  }
  p.set("page", String(state.gallery.page));
  try {
    const data = await api("/api/images?" + p);
    state.gallery.pages = data.pages;
    pagerInfo($("g-info"), data, "images");
    $("g-grid").replaceChildren(...data.rows.map((r) => thumb(r.image_id, r.image_id)));
  } catch (e) {
    status(e.message, "error");
  }
}

async function loadLeakage() {
  try {
    const data = await api(`/api/leakage?page=${state.leakage.page}`);
    state.leakage.pages = data.pages;
    pagerInfo($("l-info"), data, "pairs");
    $("l-rows").replaceChildren(
      ...data.rows.map((r) =>
        el(
          "div",
          { class: "leak" },
          el("div", { class: "pair" }, thumb(r.image_a, r.image_a), thumb(r.image_b, r.image_b)),
          el(
            "div",
            { class: "meta" },
            el("p", { text: `${r.kind || ""} · ${r.levels || ""}` }),
            el("p", { text: `hash distance ${r.hash_distance ?? "–"} · cosine ${r.cosine ?? "–"}` }),
            el("p", { text: `held-out sets: ${r.heldout_sets || "–"}` }),
          ),
        ),
      ),
    );
  } catch (e) {
    status(e.message, "error");
  }
}

// --- wiring --------------------------------------------------------------------------------------

function showTab(name) {
  for (const button of document.querySelectorAll(".tab")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== name;
  if (name === "gallery" && !$("g-grid").children.length) loadGallery();
  if (name === "leakage" && !$("l-rows").children.length) loadLeakage();
}

function pager(prefix, key, load) {
  $(`${prefix}-prev`).addEventListener("click", () => {
    if (state[key].page > 0) { state[key].page -= 1; load(); }
  });
  $(`${prefix}-next`).addEventListener("click", () => {
    if (state[key].page + 1 < state[key].pages) { state[key].page += 1; load(); }
  });
}

async function start() {
  try {
    state.meta = await api("/api/meta");
  } catch (e) {
    return status(`cannot read the run: ${e.message}`, "error");
  }
  const m = state.meta;
  $("run").textContent = m.run;
  options($("f-dataset"), m.triplets.datasets.map((d) => [d.name, `${d.label} (${d.rows.toLocaleString()})`]));
  options($("f-category"), m.triplets.categories);
  options($("f-source"), m.triplets.sources);
  options($("f-score"), Object.keys(m.triplets.scores));
  options($("f-sort"), m.triplets.sort_keys);
  options($("g-model"), m.models.map((name) => [name, `the gallery of ${name}`]));
  options($("g-source"), m.images.source);
  options($("g-category"), m.images.category);
  options($("g-split"), m.images.split);
  options($("q-model-a"), m.models, false);
  options($("q-model-b"), m.models);
  $("q-text").maxLength = m.limits.text_chars;
  $("q-k").max = m.limits.k;
  if (!m.models.length) {
    $("q-search").disabled = true;
    $("q-target").textContent = "no model has an index under results/index: search is off";
  }
  $("tab-leakage").hidden = !m.leakage;
  for (const button of document.querySelectorAll(".tab")) button.addEventListener("click", () => showTab(button.dataset.tab));
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); state.triplets.page = 0; loadTriplets(); });
  for (const id of ["f-dataset", "f-category", "f-source", "f-sort", "f-order", "f-flagged"]) {
    $(id).addEventListener("change", () => { state.triplets.page = 0; loadTriplets(); });
  }
  $("g-filters").addEventListener("submit", (e) => { e.preventDefault(); state.gallery.page = 0; loadGallery(); });
  pager("t", "triplets", loadTriplets);
  pager("g", "gallery", loadGallery);
  pager("l", "leakage", loadLeakage);
  $("q-upload").addEventListener("change", upload);
  $("q-search").addEventListener("click", search);
  await loadTriplets();
  document.body.dataset.ready = "1"; // the browser tests wait for this
}

document.addEventListener("DOMContentLoaded", start);
