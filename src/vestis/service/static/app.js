// The vestis web page: pick or drop an image, see every attribute with a confidence bar, overlay the
// heat-map, download the JSON; with a catalog index, browse substitutes (chips to change or lock attributes,
// a grid of thumbnails). An outfit pipeline instead: each garment's box drawn over the image, and per garment
// its object type, category and attributes. Plain browser APIs; talks only to this server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const MAX_BARS = 5; // values shown per attribute (the predicted ones always are)
  const HITS = 12; // substitutes shown

  const state = {
    taxonomy: null, file: null, result: null, heatmapUrl: null, previewUrl: null, request: 0, loaded: null,
    index: null, search: 0, // the catalog index (GET /v1/index) when the server has one; the latest search
    heatmap: true, // an embedding model has no POST /v1/heatmap
    outfit: null, // GET /v1/model of an outfit pipeline: POST /v1/outfit instead of /v1/attributes
  };

  function setStatus(text, kind = "") {
    const s = $("status");
    s.textContent = text;
    s.className = `status ${kind}`.trim();
    s.hidden = !text;
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      return `${res.status} ${body.error}${detail ? `: ${detail}` : ""}`;
    } catch {
      return `${res.status} ${res.statusText}`;
    }
  }

  async function loadModel() {
    if (await loadOutfit()) {
      pollReady();
      return;
    }
    try {
      const res = await fetch("/v1/taxonomy");
      if (!res.ok) throw new Error(await errorText(res));
      state.taxonomy = await res.json();
      const t = state.taxonomy;
      $("model-name").textContent =
        `${t.name || "model"} · ${t.attributes.length} attributes · ${t.preprocessing.image_size}px`;
      if (t.heatmap === false) noHeatmap(t.embedding);
    } catch (e) {
      $("model-name").textContent = `model unavailable (${e.message})`;
    }
    pollReady();
    loadIndex();
  }

  // an outfit pipeline answers GET /v1/model with kind "outfit"; a single-product server has no /v1/model
  async function loadOutfit() {
    let info;
    try {
      const res = await fetch("/v1/model");
      if (!res.ok) return false;
      info = await res.json();
    } catch {
      return false;
    }
    if (info.kind !== "outfit") return false;
    state.outfit = info;
    state.heatmap = false;
    $("model-name").textContent = `outfit pipeline · ${info.detector.labels.length} object types · ` +
      `${info.stage2.labels.length} categories · ${info.stage2.attributes.length} attribute values`;
    $("controls").hidden = true;
    $("result-title").textContent = "Garments";
    $("drop-hint").querySelector("strong").textContent = "Drop an outfit photo here";
    setStatus("Choose an outfit photo to see its garments.");
    return true;
  }

  // an embedding model: no heat map, and attributes without a recognition column come from the nearest prototype
  function noHeatmap(model) {
    state.heatmap = false;
    const toggle = $("heatmap-toggle");
    toggle.disabled = true;
    toggle.closest(".switch").title = "An embedding model has no heat map";
    const note = $("model-note");
    note.textContent = `${model || "This"} is an embedding model: it has no heat map, and an attribute marked ` +
      "“nearest prototype” is the value of the most similar catalog prototype, scored by cosine similarity " +
      "(not a probability).";
    note.hidden = false;
  }

  async function loadIndex() {
    try {
      const res = await fetch("/v1/index");
      if (!res.ok) return; // a server without an index: no substitutes panel
      state.index = await res.json();
    } catch {
      return;
    }
    const i = state.index;
    $("index-info").textContent = `${i.count} items · ${i.backend} ${i.kind}`;
    $("substitutes").hidden = false;
  }

  async function pollReady() {
    try {
      const res = await fetch("/readyz");
      const body = await res.json();
      $("ready-dot").className = `dot ${body.ready ? "ok" : "wait"}`;
      $("ready-dot").title = body.detail;
      if (body.ready) return;
    } catch {
      $("ready-dot").className = "dot bad";
    }
    setTimeout(pollReady, 1000);
  }

  function form(file) {
    const data = new FormData();
    data.append("file", file, file.name || "image");
    return data;
  }

  async function analyse(file) {
    const request = ++state.request;
    state.file = file;
    state.result = null;
    resetHeatmap();
    $("download").disabled = true;
    $("heatmap-toggle").disabled = true;
    $("attributes").replaceChildren();
    $("garments").replaceChildren();
    $("boxes").replaceChildren();
    $("boxes").hidden = true;
    $("chips").replaceChildren();
    $("hits").replaceChildren();
    state.search++; // a search of the previous image that answers late is dropped
    $("timing").textContent = "";

    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    $("preview").src = state.previewUrl;
    $("stage").hidden = false;
    $("drop-hint").hidden = true;
    $("drop-zone").classList.add("has-image");
    $("file-meta").textContent = `${file.name || "pasted image"} · ${(file.size / 1024).toFixed(0)} KB`;
    setStatus("Predicting…", "busy");
    // what the page knows of the model first: results render against its taxonomy (the attributes that do not
    // apply), and an outfit pipeline takes its own endpoint
    await state.loaded;
    if (request !== state.request) return;

    const t0 = performance.now();
    let res;
    try {
      res = await fetch(state.outfit ? "/v1/outfit" : "/v1/attributes", { method: "POST", body: form(file) });
    } catch (e) {
      if (request === state.request) setStatus(`The server did not answer (${e.message}).`, "error");
      return;
    }
    if (request !== state.request) return; // a newer image was chosen meanwhile
    if (!res.ok) {
      setStatus(await errorText(res), "error");
      return;
    }
    state.result = await res.json();
    const ms = performance.now() - t0;
    if (state.outfit) {
      showOutfit(state.result, ms);
      return;
    }
    const r = state.result.results[0];
    $("file-meta").textContent += ` · ${r.width}×${r.height}`;
    $("timing").textContent = `${ms.toFixed(0)} ms`;
    render(r.attributes);
    setStatus("");
    $("download").disabled = false;
    $("heatmap-toggle").disabled = !state.heatmap;
    if (state.index) {
      renderChips(r.attributes);
      search();
    }
  }

  // --- substitutes: one chip per predicted attribute; a select changes its value (set), a toggle locks it (only)
  function renderChips(attributes) {
    const box = $("chips");
    box.replaceChildren();
    for (const info of state.index.attributes) {
      const got = attributes[info.name];
      if (!got) continue; // does not apply to the predicted category
      const predicted = got.values !== undefined ? got.values : [got.value];
      const chip = el("span", "chip");
      chip.dataset.attribute = info.name;
      const select = el("select");
      select.setAttribute("aria-label", `${info.name}: search for another value`);
      // "" keeps the query's own sub-embedding; any other option is replaced by that value's prototype
      select.append(new Option(predicted.length ? predicted.join(", ") : "none", ""));
      for (const v of info.prototypes) {
        if (!(predicted.length === 1 && predicted[0] === v)) select.append(new Option(`→ ${v}`, v));
      }
      select.disabled = select.options.length < 2;
      select.addEventListener("change", () => {
        chip.classList.toggle("changed", select.value !== "");
        search();
      });
      const lock = el("button", "lock", "lock");
      lock.type = "button";
      lock.setAttribute("aria-pressed", "false");
      lock.title = `Compare ${info.name} only (with the other locked attributes)`;
      lock.addEventListener("click", () => {
        const on = lock.getAttribute("aria-pressed") !== "true";
        lock.setAttribute("aria-pressed", String(on));
        chip.classList.toggle("locked", on);
        search();
      });
      chip.append(el("span", "chip-name", info.name), select, lock);
      box.append(chip);
    }
  }

  function searchOptions() {
    const set = {};
    const locked = [];
    for (const chip of $("chips").querySelectorAll(".chip")) {
      const name = chip.dataset.attribute;
      const value = chip.querySelector("select").value;
      if (value) set[name] = value;
      if (chip.querySelector(".lock").getAttribute("aria-pressed") === "true") locked.push(name);
    }
    // with locks, only the locked attributes are compared, and a changed one too (it is what is searched for)
    const only = locked.length ? [...new Set([...locked, ...Object.keys(set)])] : null;
    return { set, only };
  }

  async function search() {
    const request = ++state.search;
    const { set, only } = searchOptions();
    const data = form(state.file);
    data.append("k", String(HITS));
    for (const [name, value] of Object.entries(set)) data.append("set", `${name}=${value}`);
    if (only) data.append("only", only.join(","));
    const status = $("search-status");
    const hits = $("hits");
    hits.dataset.state = "busy";
    status.className = "status busy";
    status.textContent = "Searching…";
    status.hidden = false;
    let res;
    try {
      res = await fetch("/v1/search", { method: "POST", body: data });
    } catch (e) {
      if (request !== state.search) return;
      status.className = "status error";
      status.textContent = `The server did not answer (${e.message}).`;
      hits.dataset.state = "error";
      return;
    }
    if (request !== state.search) return; // a newer search was started meanwhile
    if (!res.ok) {
      const message = await errorText(res); // read first: the error class and its text appear together
      if (request !== state.search) return;
      status.className = "status error";
      status.textContent = message;
      hits.replaceChildren();
      hits.dataset.state = "error";
      return;
    }
    const body = await res.json();
    if (request !== state.search) return;
    renderHits(body);
    status.hidden = !!body.hits.length;
    status.className = "status";
    status.textContent = body.hits.length ? "" : "No item matches.";
    hits.dataset.searches = String(Number(hits.dataset.searches) + 1);
    hits.dataset.state = "done";
  }

  function renderHits(body) {
    const box = $("hits");
    box.replaceChildren();
    for (const hit of body.hits) {
      const card = el("figure", "hit");
      card.dataset.id = hit.id;
      card.dataset.distance = String(hit.distance);
      const parts = Object.entries(hit.per_attribute).map(([a, s]) => `${a} ${s.toFixed(3)}`).join(" · ");
      card.title = `${hit.id}\ndistance ${hit.distance.toFixed(4)}\n${parts}`;
      const img = el("img");
      img.alt = hit.id;
      img.src = hit.thumbnail;
      const meta = el("figcaption", "hit-meta");
      meta.append(el("span", "hit-id", hit.id), el("span", "hit-distance", Math.max(0, hit.distance).toFixed(3)));
      card.append(img, meta);
      box.append(card);
    }
  }

  function render(attributes) {
    const box = $("attributes");
    box.replaceChildren();
    const t = state.taxonomy;
    const names = t ? t.attributes.map((a) => a.name) : Object.keys(attributes);
    const category = t && t.category_attribute && attributes[t.category_attribute]
      ? attributes[t.category_attribute].value : null;
    for (const name of names) {
      const info = t ? t.attributes.find((a) => a.name === name) : null;
      const got = attributes[name];
      const card = el("div", "attribute");
      card.dataset.attribute = name;
      const head = el("div", "attribute-head");
      head.append(el("span", "attribute-name", name));
      if (info) head.append(el("span", `kind ${info.kind}`, info.kind === "multi" ? "multi-label" : "single"));
      // scores of the nearest prototype are cosine similarities in [-1, 1]: shown as such, not as percentages
      const similarity = got && got.source === "prototype";
      if (similarity) {
        card.classList.add("prototype");
        head.append(el("span", "source", "nearest prototype"));
      }
      card.append(head);
      if (!got) {
        card.classList.add("not-applicable");
        card.append(el("div", "prediction muted", `does not apply${category ? ` to ${category}` : ""}`));
        box.append(card);
        continue;
      }
      const chosen = got.values !== undefined ? got.values : [got.value];
      const pred = el("div", "prediction", chosen.length ? chosen.join(", ") : "none above threshold");
      if (!chosen.length) pred.classList.add("muted");
      card.append(pred);
      const ranked = Object.entries(got.scores).sort((a, b) => b[1] - a[1]);
      const shown = ranked.filter(([v], i) => i < MAX_BARS || chosen.includes(v));
      for (const [value, score] of shown) {
        const row = el("div", "bar");
        if (chosen.includes(value)) row.classList.add("chosen");
        row.dataset.value = value;
        row.dataset.score = String(score);
        const label = el("span", "bar-value", value);
        const track = el("span", "bar-track");
        const fill = el("span", "bar-fill");
        fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
        track.append(fill);
        row.append(label, track, el("span", "bar-score", similarity ? score.toFixed(3) : pct(score)));
        card.append(row);
      }
      if (ranked.length > shown.length) {
        card.append(el("div", "more muted", `+${ranked.length - shown.length} more values`));
      }
      box.append(card);
    }
  }

  // --- an outfit pipeline: boxes over the preview and one card per garment -------------------------------------
  function showOutfit(result, ms) {
    $("file-meta").textContent += ` · ${result.width}×${result.height}`;
    $("timing").textContent = `${ms.toFixed(0)} ms`;
    renderGarments(result.garments);
    const preview = $("preview");
    if (preview.complete && preview.naturalWidth) drawBoxes();
    else preview.addEventListener("load", drawBoxes, { once: true });
    const n = result.garments.length;
    setStatus(n ? "" : "No garment found.");
    $("download").disabled = false;
  }

  // the preview is drawn with object-fit: contain; the boxes (upload pixels) go on the area the image fills
  function drawBoxes() {
    const result = state.result;
    const layer = $("boxes");
    layer.replaceChildren();
    if (!state.outfit || !result || !result.garments.length) {
      layer.hidden = true;
      return;
    }
    const preview = $("preview");
    const w = preview.clientWidth;
    const h = preview.clientHeight;
    const scale = Math.min(w / result.width, h / result.height);
    const left = (w - result.width * scale) / 2;
    const top = (h - result.height * scale) / 2;
    result.garments.forEach((g, i) => {
      const [x0, y0, x1, y1] = g.box;
      const box = el("div", "box");
      box.dataset.index = String(i);
      box.style.left = `${left + x0 * scale}px`;
      box.style.top = `${top + y0 * scale}px`;
      box.style.width = `${(x1 - x0) * scale}px`;
      box.style.height = `${(y1 - y0) * scale}px`;
      box.title = `${g.object_type} ${pct(g.object_score)} · ${g.category}`;
      box.append(el("span", "box-label", `${i + 1} ${g.object_type}`));
      layer.append(box);
    });
    layer.hidden = false;
  }

  function highlight(i, on) {
    for (const node of document.querySelectorAll(`.box[data-index="${i}"], .garment[data-index="${i}"]`)) {
      node.classList.toggle("active", on);
    }
  }

  function renderGarments(garments) {
    const list = $("garments");
    list.replaceChildren();
    garments.forEach((g, i) => {
      const item = el("li", "garment");
      item.dataset.index = String(i);
      const head = el("div", "garment-head");
      head.append(
        el("span", "garment-type", `${i + 1} · ${g.object_type} ${pct(g.object_score)}`),
        el("span", "garment-category", `${g.category} ${pct(g.category_score)}`),
      );
      item.append(head);
      const attrs = el("dl", "garment-attributes");
      for (const [name, values] of Object.entries(g.attributes)) {
        const dd = el("dd", "garment-values", values.map(([v, s]) => `${v} ${pct(s)}`).join(", "));
        dd.dataset.attribute = name;
        attrs.append(el("dt", "", name), dd);
      }
      if (attrs.children.length) item.append(attrs);
      else item.append(el("div", "muted", "no attribute above its threshold"));
      if (g.suppressed.length) {
        item.append(el("div", "garment-suppressed muted", `does not apply to ${g.category}: ${g.suppressed.join(", ")}`));
      }
      item.addEventListener("mouseenter", () => highlight(i, true));
      item.addEventListener("mouseleave", () => highlight(i, false));
      list.append(item);
    });
    list.hidden = false;
  }

  function resetHeatmap() {
    if (state.heatmapUrl) URL.revokeObjectURL(state.heatmapUrl);
    state.heatmapUrl = null;
    $("heatmap").hidden = true;
    $("heatmap").removeAttribute("src");
    $("heatmap-toggle").checked = false;
    $("heatmap-opacity").disabled = true;
  }

  async function toggleHeatmap() {
    const on = $("heatmap-toggle").checked;
    $("heatmap-opacity").disabled = !on;
    if (!on) {
      $("heatmap").hidden = true;
      return;
    }
    if (!state.heatmapUrl) {
      const request = state.request;
      setStatus("Computing the heat map…", "busy");
      let res;
      try {
        res = await fetch("/v1/heatmap", { method: "POST", body: form(state.file) });
      } catch (e) {
        setStatus(`The server did not answer (${e.message}).`, "error");
        return;
      }
      if (request !== state.request) return;
      if (!res.ok) {
        setStatus(await errorText(res), "error");
        $("heatmap-toggle").checked = false;
        return;
      }
      state.heatmapUrl = URL.createObjectURL(await res.blob());
      $("heatmap").src = state.heatmapUrl;
      setStatus("");
    }
    $("heatmap").hidden = !$("heatmap-toggle").checked;
  }

  function download() {
    if (!state.result) return;
    const blob = new Blob([JSON.stringify(state.result, null, 2)], { type: "application/json" });
    const a = el("a");
    const base = (state.file && state.file.name ? state.file.name : "image").replace(/\.[^.]+$/, "");
    a.href = URL.createObjectURL(blob);
    a.download = `${base}.${state.outfit ? "outfit" : "attributes"}.json`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  function pick(files) {
    const file = files && files[0];
    if (file) analyse(file);
  }

  function wire() {
    const zone = $("drop-zone");
    $("file-input").addEventListener("change", (e) => pick(e.target.files));
    ["dragenter", "dragover"].forEach((type) =>
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.add("dragging");
      }));
    ["dragleave", "drop"].forEach((type) =>
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.remove("dragging");
      }));
    zone.addEventListener("drop", (e) => pick(e.dataTransfer && e.dataTransfer.files));
    document.addEventListener("paste", (e) => {
      const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
      if (item) pick([item.getAsFile()]);
    });
    $("heatmap-toggle").addEventListener("change", toggleHeatmap);
    $("heatmap-opacity").addEventListener("input", (e) => {
      $("heatmap").style.opacity = String(e.target.value / 100);
    });
    $("heatmap").style.opacity = String($("heatmap-opacity").value / 100);
    $("download").addEventListener("click", download);
    window.addEventListener("resize", () => {
      if (state.outfit) drawBoxes();
    });
  }

  wire();
  state.loaded = loadModel();
})();
