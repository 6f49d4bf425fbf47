// medseg viewer: segment a scan with the service and show the labels over it. Plain JS, no dependencies.
// Everything comes from the authorised API (/v1/...); the token lives in sessionStorage only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "medseg-token";
  const CORRECTOR_KEY = "medseg-corrected-by";
  const CT_PRESETS = [["Soft tissue", 40, 400], ["Lung", -600, 1500], ["Bone", 400, 1800], ["Brain", 40, 80],
    ["Liver", 60, 160]];
  const PLANES = {axial: 0, coronal: 1, sagittal: 2};
  const UNCERTAINTY_COLOUR = [255, 0, 255];

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    models: [], source: null, sourceName: "", data: null, scan: null,
    plane: "axial", slices: {axial: 0, coronal: 0, sagittal: 0},
    level: 0, width: 1, channel: 0, colour: false, generation: 0,
    // corrections: the labels as the model gave them, the strokes (each a Map index -> value before it)
    edit: {original: null, strokes: [], stroke: null, changed: 0, saved: 0},
  };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  async function describe(response) {
    let detail = "";
    try {
      const body = await response.json();
      if (typeof body.detail === "string") detail = body.detail;
      else if (Array.isArray(body.detail)) detail = body.detail.map((d) => d.msg || "").join("; ");
    } catch (e) { /* not JSON */ }
    switch (response.status) {
      case 401: return "The access token was not accepted. Enter the token your administrator gave you.";
      case 404: return detail ? `Not found: ${detail}.` : "Not found.";
      case 413: return `The file is too large for this service. ${detail}`;
      case 415: return `This file type is not supported. ${detail}`;
      case 400: case 422: return `The scan could not be used: ${detail}`;
      case 503: return "The service is busy with other scans. Please try again in a few seconds.";
      case 504: return `The segmentation took too long and was stopped. ${detail}`;
      default:
        return detail ? `The service could not process the request: ${detail}`
          : `The service answered with an error (HTTP ${response.status}). Please try again or ask the administrator.`;
    }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, {headers}));
    } catch (e) {
      throw new ApiError(0, "Cannot reach the segmentation service. Check the network connection and that the service is running.");
    }
    if (!response.ok) throw new ApiError(response.status, await describe(response));
    return response;
  }

  function failed(error) {
    if (error.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      askToken(error.message);
      return;
    }
    showError(error.message || String(error));
  }

  // ---- token and models ----------------------------------------------------------------------------------

  function askToken(message) {
    $("app").hidden = true;
    $("change-token").hidden = true;
    $("token-form").hidden = false;
    showError(message || "");
    $("token-input").value = "";
    $("token-input").focus();
  }

  async function loadModels() {
    let models;
    try {
      models = await (await api("/v1/models")).json();
    } catch (error) {
      if (error.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        const hadToken = Boolean(state.token);
        state.token = null;
        askToken(hadToken ? error.message : "");
      } else {
        showError(error.message);
      }
      return;
    }
    showError("");
    state.models = models;
    $("token-form").hidden = true;
    $("app").hidden = false;
    $("change-token").hidden = !state.token;
    const select = $("model");
    select.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.dimension}D)`, m.name)));
    if (!models.length) showError("This service has no models loaded.");
    describeModel();
    loadExamples();
    fetch("/health").then((r) => r.json()).then((h) => {
      $("service").textContent = `service ${h.version}, ${h.models.length} model(s)`;
    }).catch(() => {});
  }

  function describeModel() {
    const model = state.models.find((m) => m.name === $("model").value);
    if (!model) return;
    const labels = Object.entries(model.labels).filter(([v]) => v !== "0").map(([, n]) => n).join(", ");
    const channels = Object.values(model.channels.names || {}).join(", ") || `${model.channels.count} channel(s)`;
    $("model-info").textContent = `${model.dimension}D ${channels}; labels: ${labels}`;
  }

  async function loadExamples() {
    try {
      const {examples} = await (await api("/v1/examples")).json();
      const select = $("example");
      select.replaceChildren(new Option("(none)", ""), ...examples.map((e) => new Option(e.name, e.name)));
      $("examples-box").hidden = !examples.length;
      $("worklist-box").hidden = !examples.length;
      $("worklist").replaceChildren();
    } catch (error) {
      $("examples-box").hidden = true;
    }
  }

  // ---- segmenting ------------------------------------------------------------------------------------------

  async function segment() {
    const model = $("model").value;
    const file = $("file").files[0];
    const example = $("example").value;
    const useExample = state.source === "example" ? Boolean(example) : !file && Boolean(example);
    if (!model) { showError("Choose a model first."); return; }
    if (!useExample && !file) { showError("Choose a scan to upload (or an example) first."); return; }
    const params = new URLSearchParams();
    if ($("want-uncertainty").checked) params.set("uncertainty", "true");
    const options = {method: "POST"};
    let name;
    if (useExample) {
      params.set("example", example);
      name = example;
    } else {
      const form = new FormData();
      form.append("file", file, file.name);
      options.body = form;
      name = file.name;
    }
    showError("");
    $("run").disabled = true;
    $("busy").hidden = false;
    try {
      const response = await api(`/v1/models/${encodeURIComponent(model)}/view?${params}`, options);
      const data = await response.json();
      state.sourceName = name;
      show(data);
    } catch (error) {
      failed(error);
    } finally {
      $("run").disabled = false;
      $("busy").hidden = true;
    }
  }

  function decode(base64, Type) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Type(bytes.buffer);
  }

  function show(data) {
    const view = data.view;
    const shape = view.dim === 2 ? [1, ...view.shape] : view.shape;
    const spacing = view.dim === 2 ? [1, ...view.spacing] : view.spacing;
    const labelType = view.labels.dtype === "uint16" ? Uint16Array : Uint8Array;
    state.data = data;
    state.generation += 1;
    state.scan = {
      dim: view.dim, shape, spacing,
      channels: view.channels.map((c) => Object.assign({}, c, {values: decode(c.data, Int16Array)})),
      labels: decode(view.labels.data, labelType),
      uncertainty: view.uncertainty ? decode(view.uncertainty.data, Uint8Array) : null,
      colours: new Map(view.legend.map((l) => [l.value, hexColour(l.color)])),
      rgb: view.rgb,
    };
    setupCorrections(data);
    state.slices = {axial: Math.floor(shape[0] / 2), coronal: Math.floor(shape[1] / 2),
      sagittal: Math.floor(shape[2] / 2)};
    state.plane = "axial";
    setupChannels(view);
    setupWindow(view);
    $("show-uncertainty").checked = false;
    $("show-uncertainty").disabled = !state.scan.uncertainty;
    $("uncertainty-toggle-box").title = state.scan.uncertainty ? "" : "Segment again with the uncertainty map on";
    $("planes").hidden = view.dim !== 3;
    $("slice-box").hidden = view.dim !== 3;
    $("display").hidden = false;
    $("empty").hidden = true;
    $("canvas").hidden = false;
    const notes = [];
    if (view.stride > 1) notes.push(`Shown at 1/${view.stride} resolution; volumes and the mask are full resolution.`);
    if (view.orientation !== "radiological" && view.dim === 3) notes.push("Orientation: as stored in the file.");
    if (view.channel_count > view.channels.length) notes.push(`Showing ${view.channels.length} of ${view.channel_count} channels.`);
    $("viewer-hint").textContent = notes.join(" ") + (view.dim === 3 ? " Scroll the mouse wheel over the image to move through slices." : "");
    showResults(data);
    selectPlane("axial");
  }

  function showResults(data) {
    const result = data.result;
    const view = data.view;
    const area = result.volume_unit !== "ml";
    $("unit-header").textContent = area ? "Area (mm²)" : "Volume (ml)";
    const rows = view.legend.map((entry) => {
      const row = document.createElement("tr");
      const swatch = document.createElement("td");
      const chip = document.createElement("span");
      chip.className = "swatch";
      chip.style.background = entry.color;
      swatch.append(chip);
      const name = document.createElement("td");
      name.textContent = entry.name;
      const value = document.createElement("td");
      value.className = "volume";
      const amount = result.volumes[entry.name];
      value.dataset.label = entry.name;
      value.dataset.value = amount === undefined ? "" : String(amount);
      value.textContent = amount === undefined ? "–" : `${amount} ${area ? "mm²" : "ml"}`;
      row.append(swatch, name, value);
      return row;
    });
    $("volumes").tBodies[0].replaceChildren(...rows);
    const drift = result.drift || {};
    const box = $("drift");
    if (drift.flag) {
      box.replaceChildren();
      const title = document.createElement("strong");
      title.textContent = "Input drift: this scan looks unlike the data the model was trained on. Check the result with extra care.";
      const list = document.createElement("ul");
      for (const reason of drift.reasons || []) {
        const item = document.createElement("li");
        item.textContent = reason;
        list.append(item);
      }
      box.append(title, list);
    }
    box.hidden = !drift.flag;
    const notes = [`${result.shape.join(" × ")} voxels, spacing ${result.spacing.map((s) => +s.toFixed(3)).join(" × ")} mm, ${result.seconds} s.`];
    if (area && result.spacing.every((s) => s === 1)) notes.push("The file holds no pixel size: 1 mm pixels assumed for the areas.");
    if (result.uncertainty) notes.push(`Mean uncertainty in the segmented region: ${result.uncertainty.mean_in_foreground}.`);
    $("result-notes").textContent = notes.join(" ");
    $("results").hidden = false;
  }

  function hexColour(hex) {
    const v = parseInt(hex.slice(1), 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }

  // ---- display controls -------------------------------------------------------------------------------------

  function setupChannels(view) {
    const select = $("channel");
    const options = view.channels.map((c, i) => new Option(`Channel ${i}`, String(i)));
    if (view.rgb) options.unshift(new Option("Colour (RGB)", "rgb"));
    select.replaceChildren(...options);
    $("channel-box").hidden = options.length < 2;
    state.colour = view.rgb;
    state.channel = 0;
  }

  function setupWindow(view) {
    const channel = state.scan.channels[state.channel];
    const select = $("preset");
    const options = [new Option("Automatic", "auto"), new Option("Full range", "full")];
    if (view.modality === "ct") {
      for (const [name, level, width] of CT_PRESETS) options.push(new Option(`${name} (L ${level} / W ${width})`, `${level}/${width}`));
    }
    select.replaceChildren(...options);
    const span = Math.max(channel.max - channel.min, 1e-6);
    const step = span / 1000;
    Object.assign($("level"), {min: channel.min - span / 2, max: channel.max + span / 2, step});
    Object.assign($("width"), {min: step, max: span * 2, step});
    applyPreset(view.modality === "ct" ? `${CT_PRESETS[0][1]}/${CT_PRESETS[0][2]}` : "auto");
    $("window-box").hidden = state.colour;
  }

  function applyPreset(value) {
    const channel = state.scan.channels[state.channel];
    let low, high;
    if (value === "auto") [low, high] = channel.window;
    else if (value === "full") [low, high] = [channel.min, channel.max];
    else {
      const [level, width] = value.split("/").map(Number);
      [low, high] = [level - width / 2, level + width / 2];
    }
    $("preset").value = value;
    setWindow((low + high) / 2, Math.max(high - low, 1e-6));
  }

  function setWindow(level, width) {
    state.level = level;
    state.width = width;
    $("level").value = level;
    $("width").value = width;
    $("level-label").textContent = formatNumber(level);
    $("width-label").textContent = formatNumber(width);
  }

  function formatNumber(v) {
    return Math.abs(v) >= 100 ? v.toFixed(0) : +v.toPrecision(3) + "";
  }

  function selectPlane(plane) {
    state.plane = plane;
    for (const button of $("planes").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.plane === plane));
    }
    const slider = $("slice");
    slider.max = String(state.scan.shape[PLANES[plane]] - 1);
    slider.value = String(state.slices[plane]);
    draw();
  }

  function setSlice(index) {
    const count = state.scan.shape[PLANES[state.plane]];
    state.slices[state.plane] = Math.max(0, Math.min(count - 1, index));
    $("slice").value = String(state.slices[state.plane]);
    draw();
  }

  // ---- drawing ----------------------------------------------------------------------------------------------

  // The current slice as a 2D grid: width, height, pixel size (mm) and the flat index of each pixel.
  function sliceGeometry() {
    const [Z, Y, X] = state.scan.shape;
    const [sz, sy, sx] = state.scan.spacing;
    const s = state.slices[state.plane];
    if (state.plane === "coronal") { // rows: superior at the top
      return {width: X, height: Z, pw: sx, ph: sz, index: (r, c) => (Z - 1 - r) * Y * X + s * X + c};
    }
    if (state.plane === "sagittal") {
      return {width: Y, height: Z, pw: sy, ph: sz, index: (r, c) => (Z - 1 - r) * Y * X + c * X + s};
    }
    return {width: X, height: Y, pw: sx, ph: sy, index: (r, c) => s * Y * X + r * X + c};
  }

  function draw() {
    const scan = state.scan;
    if (!scan) return;
    const g = sliceGeometry();
    const {width, height} = g;
    const n = width * height;
    const flat = new Int32Array(n);
    for (let r = 0, k = 0; r < height; r++) for (let c = 0; c < width; c++, k++) flat[k] = g.index(r, c);
    const labels = new Uint16Array(n);
    for (let k = 0; k < n; k++) labels[k] = scan.labels[flat[k]];

    const off = document.createElement("canvas");
    off.width = width;
    off.height = height;
    const context = off.getContext("2d");
    const image = context.createImageData(width, height);
    const px = image.data;
    const low = state.level - state.width / 2;
    const scale = 255 / state.width;
    const channel = scan.channels[state.channel];
    for (let k = 0; k < n; k++) {
      const i = flat[k];
      if (state.colour) {
        for (let c = 0; c < 3; c++) px[4 * k + c] = scan.channels[c].values[i] * scan.channels[c].slope + scan.channels[c].intercept;
      } else {
        const value = channel.values[i] * channel.slope + channel.intercept;
        const grey = Math.max(0, Math.min(255, (value - low) * scale));
        px[4 * k] = px[4 * k + 1] = px[4 * k + 2] = grey;
      }
      px[4 * k + 3] = 255;
    }
    const opacity = Number($("opacity").value) / 100;
    const outline = document.querySelector("input[name=style]:checked").value === "outline";
    let overlay = 0;
    for (let r = 0, k = 0; r < height; r++) {
      for (let c = 0; c < width; c++, k++) {
        const label = labels[k];
        if (!label) continue;
        if (outline && r > 0 && r < height - 1 && c > 0 && c < width - 1 && labels[k - 1] === label
          && labels[k + 1] === label && labels[k - width] === label && labels[k + width] === label) continue;
        const colour = scan.colours.get(label) || [255, 255, 255];
        const alpha = outline && opacity > 0 ? Math.min(1, 0.3 + opacity) : opacity;
        for (let c2 = 0; c2 < 3; c2++) px[4 * k + c2] = px[4 * k + c2] * (1 - alpha) + colour[c2] * alpha;
        overlay++;
      }
    }
    if (scan.uncertainty && $("show-uncertainty").checked) {
      for (let k = 0; k < n; k++) {
        const alpha = 0.85 * scan.uncertainty[flat[k]] / 255;
        if (!alpha) continue;
        for (let c = 0; c < 3; c++) px[4 * k + c] = px[4 * k + c] * (1 - alpha) + UNCERTAINTY_COLOUR[c] * alpha;
      }
    }
    context.putImageData(image, 0, 0);

    const canvas = $("canvas");
    const stage = $("stage");
    const aspect = (width * g.pw) / (height * g.ph);
    const maxWidth = Math.max(stage.clientWidth, 100);
    const maxHeight = Math.max(window.innerHeight - 230, 200);  // slider and header stay in view
    let shownWidth = maxWidth;
    let shownHeight = shownWidth / aspect;
    if (shownHeight > maxHeight) { shownHeight = maxHeight; shownWidth = shownHeight * aspect; }
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(shownWidth * ratio);
    canvas.height = Math.round(shownHeight * ratio);
    canvas.style.width = `${Math.round(shownWidth)}px`;
    canvas.style.height = `${Math.round(shownHeight)}px`;
    const visible = canvas.getContext("2d");
    visible.imageSmoothingEnabled = false;
    visible.drawImage(off, 0, 0, canvas.width, canvas.height);

    const count = scan.shape[PLANES[state.plane]];
    const index = state.slices[state.plane];
    $("slice-label").textContent = `${index + 1} / ${count}`;
    Object.assign(canvas.dataset, {plane: state.plane, slice: String(index), overlay: String(overlay),
      generation: String(state.generation), edits: String(state.edit.changed)});
  }

  // ---- corrections: brush and eraser per label, undo, save ---------------------------------------------------

  function setupCorrections(data) {
    const edit = state.edit;
    edit.original = state.scan.labels.slice();
    edit.strokes = [];
    edit.stroke = null;
    edit.changed = 0;
    edit.saved = 0;
    const enabled = Boolean(data.correction_url);
    $("correct").hidden = !enabled;
    $("edit-label").replaceChildren(...data.view.legend.map((l) => new Option(l.name, String(l.value))));
    $("corrected-by").value = sessionStorage.getItem(CORRECTOR_KEY) || "";
    document.querySelector("input[name=tool][value=none]").checked = true;
    $("canvas").classList.remove("editing");
    $("correction-status").textContent = "";
    updateEditButtons();
  }

  function tool() {
    return state.scan && !$("correct").hidden ? document.querySelector("input[name=tool]:checked").value : "none";
  }

  function updateEditButtons() {
    const edit = state.edit;
    $("undo").disabled = !edit.strokes.length;
    $("save-correction").disabled = !edit.changed;
  }

  function countChanged() {
    const {labels} = state.scan;
    const {original} = state.edit;
    let changed = 0;
    for (let i = 0; i < labels.length; i++) if (labels[i] !== original[i]) changed++;
    state.edit.changed = changed;
  }

  // The slice pixel (row, column) under a pointer event, or null outside the image.
  function pixelAt(event) {
    const canvas = $("canvas");
    const box = canvas.getBoundingClientRect();
    const g = sliceGeometry();
    const c = Math.floor((event.clientX - box.left) / box.width * g.width);
    const r = Math.floor((event.clientY - box.top) / box.height * g.height);
    return r >= 0 && r < g.height && c >= 0 && c < g.width ? [r, c] : null;
  }

  function paint(event) {
    const where = pixelAt(event);
    const stroke = state.edit.stroke;
    if (!where || !stroke) return;
    const g = sliceGeometry();
    const radius = Number($("brush-size").value);
    const label = Number($("edit-label").value);
    const erase = tool() === "eraser";
    const labels = state.scan.labels;
    const [r0, c0] = where;
    for (let r = Math.max(0, r0 - radius); r <= Math.min(g.height - 1, r0 + radius); r++) {
      for (let c = Math.max(0, c0 - radius); c <= Math.min(g.width - 1, c0 + radius); c++) {
        if ((r - r0) ** 2 + (c - c0) ** 2 > radius * radius) continue;
        const i = g.index(r, c);
        const next = erase ? (labels[i] === label ? 0 : labels[i]) : label;
        if (next === labels[i]) continue;
        if (!stroke.has(i)) stroke.set(i, labels[i]);
        labels[i] = next;
      }
    }
    draw();
  }

  function endStroke() {
    const edit = state.edit;
    if (!edit.stroke) return;
    if (edit.stroke.size) edit.strokes.push(edit.stroke);
    edit.stroke = null;
    countChanged();
    updateEditButtons();
    draw();
  }

  function undo() {
    const stroke = state.edit.strokes.pop();
    if (!stroke) return;
    for (const [i, value] of stroke) state.scan.labels[i] = value;
    countChanged();
    updateEditButtons();
    draw();
  }

  function base64(typed) {
    const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  async function saveCorrection() {
    const name = $("corrected-by").value.trim();
    if (!name) { showError("Enter your name or initials under \"Corrected by\" before saving."); return; }
    const {labels} = state.scan;
    const {original} = state.edit;
    const index = [];
    for (let i = 0; i < labels.length; i++) if (labels[i] !== original[i]) index.push(i);
    const body = {corrected_by: name, index: base64(Uint32Array.from(index)),
      value: base64(Uint16Array.from(index, (i) => labels[i]))};
    sessionStorage.setItem(CORRECTOR_KEY, name);
    showError("");
    $("save-correction").disabled = true;
    $("correction-status").textContent = "Saving…";
    try {
      const response = await api(state.data.correction_url, {method: "POST", body: JSON.stringify(body),
        headers: {"Content-Type": "application/json"}});
      const saved = await response.json();
      state.edit.saved += 1;
      $("correction-status").textContent = `Saved as case ${saved.case} (${saved.changed_voxels} voxels changed). ` +
        "Saving again replaces it.";
      $("correction-status").dataset.case = saved.case;
      $("correction-status").dataset.saved = String(state.edit.saved);
    } catch (error) {
      $("correction-status").textContent = "";
      failed(error);
    } finally {
      updateEditButtons();
    }
  }

  // ---- worklist: the examples ranked by uncertainty ----------------------------------------------------------

  async function rankExamples() {
    const model = $("model").value;
    if (!model) return;
    $("rank").disabled = true;
    $("busy").hidden = false;
    showError("");
    try {
      const {cases} = await (await api(`/v1/models/${encodeURIComponent(model)}/worklist`, {method: "POST"})).json();
      $("worklist").replaceChildren(...cases.map((entry) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = `${entry.name}: ${entry.score.toFixed(3)}${entry.corrected ? " (corrected)" : ""}`;
        button.dataset.name = entry.name;
        button.dataset.score = String(entry.score);
        if (entry.corrected) item.className = "corrected";
        button.addEventListener("click", () => {
          $("example").value = entry.name;
          state.source = "example";
          segment();
        });
        item.append(button);
        return item;
      }));
    } catch (error) {
      failed(error);
    } finally {
      $("rank").disabled = false;
      $("busy").hidden = true;
    }
  }

  // ---- downloads --------------------------------------------------------------------------------------------

  function stem(name) {
    return (name || "scan").replace(/\.nii\.gz$/i, "").replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_") || "scan";
  }

  function save(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  async function downloadMask() {
    if (!state.data) return;
    try {
      const blob = await (await api(state.data.mask_url)).blob();
      const suffix = state.data.mask_filename.replace(/^mask/, "");
      save(blob, `${stem(state.sourceName)}_mask${suffix}`);
    } catch (error) {
      failed(error);
    }
  }

  function snapshot() {
    if (!state.scan) return;
    const where = state.scan.dim === 3 ? `_${state.plane}${state.slices[state.plane] + 1}` : "";
    $("canvas").toBlob((blob) => save(blob, `${stem(state.sourceName)}${where}.png`), "image/png");
  }

  // ---- wiring -----------------------------------------------------------------------------------------------

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      loadModels();
    });
    $("change-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      askToken("");
    });
    $("model").addEventListener("change", describeModel);
    $("file").addEventListener("change", () => { state.source = "file"; });
    $("example").addEventListener("change", () => { state.source = "example"; });
    $("run").addEventListener("click", segment);
    $("slice").addEventListener("input", () => setSlice(Number($("slice").value)));
    const canvas = $("canvas");
    canvas.addEventListener("pointerdown", (event) => {
      if (tool() === "none" || event.button !== 0) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      state.edit.stroke = new Map();
      paint(event);
    });
    canvas.addEventListener("pointermove", (event) => { if (state.edit.stroke) paint(event); });
    canvas.addEventListener("pointerup", endStroke);
    canvas.addEventListener("pointercancel", endStroke);
    for (const radio of document.querySelectorAll("input[name=tool]")) {
      radio.addEventListener("change", () => canvas.classList.toggle("editing", tool() !== "none"));
    }
    $("brush-size").addEventListener("input", () => {
      $("brush-size-label").textContent = `${$("brush-size").value} px`;
    });
    $("undo").addEventListener("click", undo);
    $("save-correction").addEventListener("click", saveCorrection);
    $("rank").addEventListener("click", rankExamples);
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key === "z" && !$("correct").hidden) { event.preventDefault(); undo(); }
    });
    $("canvas").addEventListener("wheel", (event) => {
      if (!state.scan || state.scan.dim !== 3) return;
      event.preventDefault();
      setSlice(state.slices[state.plane] + (event.deltaY > 0 ? 1 : -1));
    }, {passive: false});
    for (const button of $("planes").querySelectorAll("button")) {
      button.addEventListener("click", () => selectPlane(button.dataset.plane));
    }
    $("opacity").addEventListener("input", () => {
      $("opacity-label").textContent = `${$("opacity").value}%`;
      draw();
    });
    for (const radio of document.querySelectorAll("input[name=style]")) radio.addEventListener("change", draw);
    $("show-uncertainty").addEventListener("change", draw);
    $("channel").addEventListener("change", () => {
      const value = $("channel").value;
      state.colour = value === "rgb";
      state.channel = state.colour ? 0 : Number(value);
      setupWindow(state.data.view);
      draw();
    });
    $("preset").addEventListener("change", () => { applyPreset($("preset").value); draw(); });
    $("level").addEventListener("input", () => { setWindow(Number($("level").value), state.width); draw(); });
    $("width").addEventListener("input", () => { setWindow(state.level, Number($("width").value)); draw(); });
    $("download-mask").addEventListener("click", downloadMask);
    $("snapshot").addEventListener("click", snapshot);
    let pending = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(draw);
    });
    loadModels();
  }

  start();
})();
