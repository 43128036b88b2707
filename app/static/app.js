// The page: input (pasted text, or a .txt with or without its .ann), the calls to the service, and the
// views of the result (text with arcs, tables, legends, downloads).

import { describeRelation, formatAnn, formatScore, makeDocument, passes, quote } from "./annotations.js";
import { ApiError, request } from "./api.js";
import { entityColours, orderTypes, relationColour } from "./colours.js";
import { idOrder, SortableTable } from "./tables.js";
import { TextView } from "./textview.js";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "renersans-api-key";
const STAGES = { segmentation: "segmentation", ner: "entities", relations: "relations", decoding: "decoding" };
const MODELS = { ner: "entities", re: "relations" };

const state = {
  doc: null,
  payload: null, // the API's answer, as downloaded in .json
  name: "document",
  hidden: { entityTypes: new Set(), relationTypes: new Set() },
  threshold: 0, // the score bar: entities and relations scored below it are not shown
};

const view = new TextView($("doc"));

const entityTable = new SortableTable(
  $("entity-table"),
  [
    { key: "id", label: "ID", value: (e) => idOrder(e.id), cell: (e) => e.id },
    { key: "type", label: "Type", value: (e) => e.type, cell: (e) => typeChip(e.type, entityColours(e.type)) },
    { key: "start", label: "Start", numeric: true, value: (e) => e.start, cell: (e) => String(e.start) },
    { key: "end", label: "End", numeric: true, value: (e) => e.end, cell: (e) => String(e.end) },
    { key: "text", label: "Text", value: (e) => e.text, cell: (e) => e.text },
    scoreColumn(),
  ],
  "Entities",
);

const relationTable = new SortableTable(
  $("relation-table"),
  [
    { key: "id", label: "ID", value: (r) => idOrder(r.id), cell: (r) => r.id },
    { key: "type", label: "Type", value: (r) => r.type, cell: (r) => r.type },
    { key: "arg1", label: "From (Arg1)", value: (r) => argument(r.arg1), cell: (r) => argument(r.arg1) },
    { key: "arg2", label: "To (Arg2)", value: (r) => argument(r.arg2), cell: (r) => argument(r.arg2) },
    scoreColumn(),
    {
      key: "words",
      label: "In words",
      value: (r) => describeRelation(state.doc, r),
      cell: (r) => describeRelation(state.doc, r),
    },
  ],
  "Relations (each is an arc in the Text view)",
);

function scoreColumn() {
  // Unscored rows (none in a model's answer) sort below every score.
  const value = (x) => (x.score === null ? -1 : x.score);
  return { key: "score", label: "Score", numeric: true, value, cell: (x) => formatScore(x.score) };
}

function argument(id) {
  const e = state.doc.byId.get(id);
  return `${quote(e)} ${e.type} ${e.id}`;
}

function typeChip(type, colours) {
  const chip = document.createElement("span");
  chip.className = "type-chip";
  chip.style.setProperty("--fill", colours.fill);
  chip.style.setProperty("--edge", colours.edge);
  chip.textContent = type;
  return chip;
}

// ---- messages ----

function showError(error) {
  const box = $("error");
  const e =
    error instanceof ApiError ? error : new ApiError(String(error.message || error), "", "", 0, "Error");
  box.querySelector(".error-title").textContent = e.title;
  box.querySelector(".error-hint").textContent = e.hint;
  box.querySelector(".error-detail").textContent = e.detail ? `The service said: ${e.detail}` : "";
  box.dataset.kind = e.kind;
  box.hidden = false;
  if (e.kind === "Unauthorized" || e.status === 401) {
    $("key-box").open = true;
    $("api-key").focus();
  }
}

function clearError() {
  $("error").hidden = true;
  delete $("error").dataset.kind;
}

function busy(message) {
  for (const id of ["run", "open"]) $(id).disabled = Boolean(message);
  $("status").textContent = message || "";
  document.body.classList.toggle("busy", Boolean(message));
}

function key() {
  return $("api-key").value.trim();
}

// ---- actions ----

async function annotateText(text, name) {
  const started = performance.now();
  const payload = await request("extract", { json: { text, relations: $("relations").checked }, key: key() });
  const ms = performance.now() - started;
  show(makeDocument(text, payload.entities, payload.relations), payload, name, modelFacts(payload, ms));
}

async function onPaste(event) {
  event.preventDefault();
  clearError();
  const text = $("text").value;
  if (!text.trim()) {
    const hint = "Paste a document into the box first.";
    showError(new ApiError("There is no text to annotate.", hint, "", 0, "Empty"));
    $("text").focus();
    return;
  }
  busy("Annotating… (the first request after a start takes a few seconds more)");
  try {
    await annotateText(text, "document");
    busy("");
    $("status").textContent = "Done.";
  } catch (error) {
    busy("");
    showError(error);
  }
}

async function onUpload(event) {
  event.preventDefault();
  clearError();
  const txt = $("txt-file").files[0];
  const ann = $("ann-file").files[0];
  if (!txt) {
    showError(new ApiError("Choose a .txt file.", "The .ann is optional; the .txt is needed.", "", 0, "Empty"));
    $("txt-file").focus();
    return;
  }
  const name = txt.name.replace(/\.[^.]*$/, "") || "document";
  // The service decodes the file (UTF-8, as the brat tools do) and checks the .ann against it, so the
  // offsets here are exactly the file's.
  const form = new FormData();
  form.append("txt", txt, txt.name);
  if (ann) form.append("ann", ann, ann.name);
  busy(ann ? "Reading the files…" : "Reading the file…");
  try {
    const parsed = await request("brat/parse", { form, key: key() });
    if (ann) {
      const doc = makeDocument(parsed.text, parsed.entities, parsed.relations);
      show(doc, parsed, name, fileFacts(txt, ann, parsed));
    } else {
      busy("Annotating…");
      await annotateText(parsed.text, name);
    }
    busy("");
    $("status").textContent = "Done.";
  } catch (error) {
    busy("");
    showError(error);
  }
}

// ---- the result ----

function show(doc, payload, name, facts) {
  state.doc = doc;
  state.payload = payload;
  state.name = name;
  state.hidden.entityTypes.clear();
  state.hidden.relationTypes.clear();
  state.threshold = 0;
  $("threshold").value = "0";
  $("score-filter").hidden = !doc.scored;
  entityTable.showColumn("score", doc.scored);
  relationTable.showColumn("score", doc.scored);
  $("result").hidden = false;
  $("result-heading").textContent =
    `Annotations: ${count(doc.entities.length, "entity", "entities")}, ` +
    `${count(doc.relations.length, "relation", "relations")}`;
  $("facts").replaceChildren(...facts);
  legends();
  refresh();
}

// What passes the score bar: an entity scored at least the bar, a relation scored so between two such.
function aboveBar() {
  const doc = state.doc;
  const entities = doc.entities.filter((e) => passes(e, state.threshold));
  const ids = new Set(entities.map((e) => e.id));
  const relations = doc.relations.filter((r) => passes(r, state.threshold) && ids.has(r.arg1) && ids.has(r.arg2));
  return { entities, relations };
}

function refresh() {
  const doc = state.doc;
  const above = aboveBar();
  const entities = above.entities.filter((e) => !state.hidden.entityTypes.has(e.type));
  const ids = new Set(entities.map((e) => e.id));
  const relations = above.relations.filter(
    (r) => !state.hidden.relationTypes.has(r.type) && ids.has(r.arg1) && ids.has(r.arg2),
  );
  const shownEntities = new Set(entities);
  const shownRelations = new Set(relations);
  view.show(doc, { entity: (e) => shownEntities.has(e), relation: (r) => shownRelations.has(r) });
  entityTable.set(entities);
  relationTable.set(relations);
  counts(above);
  if (doc.scored) {
    $("threshold-value").textContent = state.threshold.toFixed(2);
    $("threshold-shown").textContent =
      `${above.entities.length} of ${count(doc.entities.length, "entity", "entities")} and ` +
      `${above.relations.length} of ${count(doc.relations.length, "relation", "relations")} at or above it.`;
  }
}

function count(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function fact(term, ...values) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = values.filter(Boolean).join("; ");
  return [dt, dd];
}

function modelFacts(payload, ms) {
  const m = payload.model;
  const created = m.created ? ` (exported ${m.created.slice(0, 10)})` : "";
  const runs = Object.keys(m.variants).map(
    (k) => `${MODELS[k] || k}: ${m.variants[k]} on ${m.providers[k] || "?"}`,
  );
  const stages = Object.entries(payload.timings_ms).map(([k, v]) => `${STAGES[k] || k} ${v.toFixed(1)} ms`);
  const total = Object.values(payload.timings_ms).reduce((a, b) => a + b, 0);
  return [
    ...fact("Model", `${m.bundle}${created}`),
    ...fact("Runs on", ...runs),
    ...fact(
      "Time",
      stages.join(", "),
      `${total.toFixed(0)} ms in the model, ${ms.toFixed(0)} ms with the network`,
    ),
  ];
}

function fileFacts(txt, ann, parsed) {
  const out = [...fact("Source", `${txt.name} with ${ann.name}, as annotated (no model ran)`)];
  const warnings = Object.entries(parsed.warnings || {}).map(([what, n]) => `${what}: ${n}`);
  if (warnings.length) out.push(...fact("Not drawn or unusual", ...warnings));
  return out;
}

// The chips: one per type in the answer, whatever the bar hides (their counts follow it: `counts`).
function legends() {
  const doc = state.doc;
  const entityCounts = tally(doc.entities);
  const relationCounts = tally(doc.relations);
  $("entity-legend").replaceChildren(
    ...orderTypes(entityCounts.keys(), "entity").map((t) =>
      chip(t, entityCounts.get(t), entityColours(t), state.hidden.entityTypes, "entities"),
    ),
  );
  $("relation-legend").replaceChildren(
    ...orderTypes(relationCounts.keys(), "relation").map((t) => {
      const c = relationColour(t);
      const colours = { fill: "#ffffff", edge: c, text: c };
      return chip(t, relationCounts.get(t), colours, state.hidden.relationTypes, "relations");
    }),
  );
  if (!relationCounts.size) $("relation-legend").textContent = "none";
  if (!entityCounts.size) $("entity-legend").textContent = "none";
}

// Each chip counts its type's annotations that pass the score bar; a type pressed off keeps its count, so
// that the chip says what pressing it brings back.
function counts(above) {
  for (const [legend, items] of [
    ["entity-legend", above.entities],
    ["relation-legend", above.relations],
  ]) {
    const n = tally(items);
    for (const chip of $(legend).querySelectorAll(".chip")) {
      chip.querySelector(".chip-count").textContent = String(n.get(chip.dataset.type) || 0);
    }
  }
}

function tally(items) {
  const counts = new Map();
  for (const item of items) counts.set(item.type, (counts.get(item.type) || 0) + 1);
  return counts;
}

function chip(type, n, colours, hidden, what) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chip";
  button.dataset.type = type;
  button.setAttribute("aria-pressed", String(!hidden.has(type)));
  button.title = `Show or hide ${type} ${what}`;
  button.style.setProperty("--fill", colours.fill);
  button.style.setProperty("--edge", colours.edge);
  if (colours.text) button.style.setProperty("--ink", colours.text);
  const name = document.createElement("span");
  name.className = "chip-type";
  name.textContent = type;
  const number = document.createElement("span");
  number.className = "chip-count";
  number.textContent = String(n);
  button.append(name, " ", number);
  button.addEventListener("click", () => {
    if (hidden.has(type)) hidden.delete(type);
    else hidden.add(type);
    button.setAttribute("aria-pressed", String(!hidden.has(type)));
    refresh();
  });
  return button;
}

// ---- tabs (the WAI-ARIA tabs pattern: arrow keys move between tabs) ----

function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
}

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
    const tabs = [...document.querySelectorAll('[role="tab"]')];
    const next = tabs[(tabs.indexOf(tab) + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    selectTab(next);
    next.focus();
  });
}

// ---- downloads ----

function download(content, filename, type) {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

$("download-ann").addEventListener("click", () =>
  download(formatAnn(state.doc), `${state.name}.ann`, "text/plain;charset=utf-8"),
);
$("download-json").addEventListener("click", () =>
  download(JSON.stringify(state.payload, null, 2) + "\n", `${state.name}.json`, "application/json"),
);
// The text exactly as annotated: a pasted text's line breaks are the browser's (LF), so its .ann fits this
// file rather than the document it was copied from.
$("download-txt").addEventListener("click", () =>
  download(state.doc.text, `${state.name}.txt`, "text/plain;charset=utf-8"),
);

// ---- start ----

async function describeService() {
  try {
    const v = await request("version");
    const m = v.model;
    $("service").textContent = m
      ? `Service ${v.version} · model ${m.bundle} · ` +
        Object.keys(m.variants).map((k) => `${MODELS[k] || k} ${m.variants[k]} on ${m.providers[k]}`).join(", ")
      : `Service ${v.version} · the model is not loaded yet`;
  } catch (error) {
    $("service").textContent = `${error.title} ${error.hint}`;
  }
}

const stored = sessionStorage.getItem(KEY_STORE);
if (stored) $("api-key").value = stored;
$("api-key").addEventListener("input", () => sessionStorage.setItem(KEY_STORE, key()));
$("threshold").addEventListener("input", () => {
  state.threshold = Number($("threshold").value);
  refresh();
});
$("paste-form").addEventListener("submit", onPaste);
$("upload-form").addEventListener("submit", onUpload);
$("key-form").addEventListener("submit", (event) => event.preventDefault()); // Enter in the key field
document.body.dataset.ready = "true"; // for tests: the script has loaded and wired the page
describeService();
