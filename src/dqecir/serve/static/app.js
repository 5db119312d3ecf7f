// The search page: pick or upload a reference, type the change, show results, relevance and
// word effects; refine step by step (a result becomes the next reference), with the chain of
// steps kept here, in the page, and any step can be returned to.
"use strict";

// reference: {imageId, file, src, name} of the query being prepared;
// steps: [{reference, text, body}] done so far; current: the step shown (-1: none).
const state = { reference: null, steps: [], current: -1 };
const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").classList.toggle("hidden", !message);
}

function detailOf(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return "request failed (HTTP " + status + ")";
}

function setReference(reference) {
  state.reference = reference;
  $("reference-img").src = reference.src;
  $("reference-name").textContent = reference.name;
  $("reference").classList.remove("hidden");
}

function selectExample(img, id) {
  document.querySelectorAll(".examples img").forEach((el) => el.classList.remove("selected"));
  img.classList.add("selected");
  $("file-input").value = "";
  setReference({ imageId: id, file: null, src: img.src, name: id });
}

async function loadExamples() {
  const response = await fetch("/api/examples?n=16");
  const body = await response.json();
  if (!response.ok) { showError(detailOf(body, response.status)); return; }
  $("index-info").textContent = body.count + " images indexed" +
    (body.attributes.length ? " · attributes: " + body.attributes.join(", ") : "");
  $("text-input").maxLength = body.limits.max_text_chars;
  for (const ex of body.examples) {
    const img = document.createElement("img");
    img.src = ex.url;
    img.alt = ex.id;
    img.title = ex.id;
    img.addEventListener("click", () => selectExample(img, ex.id));
    $("examples").appendChild(img);
  }
}

function renderRelevance(relevance) {
  $("relevance").replaceChildren();
  $("relevance-block").classList.toggle("hidden", !relevance);
  if (!relevance) return;
  for (const [name, value] of Object.entries(relevance)) {
    const row = document.createElement("div");
    row.className = "bar";
    const pct = Math.round(100 * value);
    row.innerHTML = '<span></span><div class="track"><div class="fill"></div></div><span></span>';
    row.children[0].textContent = name;
    row.querySelector(".fill").style.width = pct + "%";
    row.children[2].textContent = pct + "%";
    $("relevance").appendChild(row);
  }
}

// The text with each word shaded by its effect (leave-one-word-out), the rest as typed.
function renderWordEffects(text, effects) {
  const words = $("words");
  words.replaceChildren();
  $("words-block").classList.toggle("hidden", !effects || !effects.length);
  if (!effects || !effects.length) return;
  const scale = Math.max(...effects.map((w) => Math.abs(w.effect))) || 1;
  let at = 0;
  for (const w of effects) {
    if (w.start > at) words.append(text.slice(at, w.start));
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = text.slice(w.start, w.end);
    const strength = Math.abs(w.effect) / scale;
    const rgb = w.effect >= 0 ? "36, 87, 197" : "197, 54, 36";
    span.style.backgroundColor = "rgba(" + rgb + ", " + (0.08 + 0.72 * strength).toFixed(2) + ")";
    if (strength > 0.6) span.classList.add("strong");
    span.title = w.word + ": " + (w.effect >= 0 ? "+" : "") + w.effect.toFixed(4);
    span.dataset.effect = String(w.effect);
    words.appendChild(span);
    at = w.end;
  }
  if (at < text.length) words.append(text.slice(at));
}

function renderResults(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of results) {
    const card = document.createElement("figure");
    card.className = "result";
    card.title = "Refine from this image";
    const img = document.createElement("img");
    img.src = r.url;
    img.alt = r.id;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = "#" + r.rank + " · " + r.score.toFixed(3);
    const id = document.createElement("div");
    id.className = "id";
    id.textContent = r.id;
    card.append(img, score, id);
    card.addEventListener("click", () => refineFrom(card, r));
    grid.appendChild(card);
  }
  $("results-hint").classList.toggle("hidden", !results.length);
}

// A result becomes the reference of the next step; its text is typed next.
function refineFrom(card, result) {
  document.querySelectorAll("#results .result").forEach((el) => el.classList.remove("selected"));
  card.classList.add("selected");
  document.querySelectorAll(".examples img").forEach((el) => el.classList.remove("selected"));
  $("file-input").value = "";
  setReference({ imageId: result.id, file: null, src: result.url, name: result.id });
  $("text-input").value = "";
  $("text-input").placeholder = "step " + (state.current + 2) + ": the next change";
  $("text-input").focus();
}

function renderChain() {
  const chain = $("chain");
  chain.replaceChildren();
  state.steps.forEach((step, i) => {
    const item = document.createElement("li");
    item.className = "step" + (i === state.current ? " current" : "");
    item.title = "Back to step " + (i + 1);
    const img = document.createElement("img");
    img.src = step.reference.src;
    img.alt = step.reference.name;
    const label = document.createElement("span");
    label.className = "step-text";
    label.textContent = step.text;
    item.append(img, label);
    item.addEventListener("click", () => showStep(i));
    chain.appendChild(item);
  });
  $("chain-panel").classList.toggle("hidden", !state.steps.length);
}

function renderStep(step) {
  const body = step.body;
  renderWordEffects(step.text, body.word_effects);
  renderRelevance(body.relevance);
  $("relevance-panel").classList.toggle(
    "hidden", !body.relevance && !(body.word_effects && body.word_effects.length));
  renderResults(body.results);
  $("took").textContent = "(" + body.results.length + " in " + body.took_ms + " ms)";
}

// Back to step i: its reference, its text and its results, as they were (no new request).
function showStep(i) {
  const step = state.steps[i];
  state.current = i;
  showError("");
  setReference(step.reference);
  $("text-input").value = step.text;
  renderChain();
  renderStep(step);
}

async function search(event) {
  event.preventDefault();
  showError("");
  const text = $("text-input").value.trim();
  const reference = state.reference;
  if (!reference) { showError("Pick or upload a reference image first."); return; }
  if (!text) { showError("Describe the change you want."); return; }
  const form = new FormData();
  form.append("text", text);
  form.append("k", $("k-select").value);
  if (reference.file) form.append("image", reference.file, reference.file.name);
  else form.append("image_id", reference.imageId);
  $("search-button").disabled = true;
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    const body = await response.json().catch(() => null);
    if (!response.ok) { showError(detailOf(body, response.status)); return; }
    const step = { reference: reference, text: text, body: body };
    // a search from an earlier step starts a new branch: the steps after it go
    state.steps = state.steps.slice(0, state.current + 1);
    state.steps.push(step);
    state.current = state.steps.length - 1;
    renderChain();
    renderStep(step);
    $("results").dataset.searches = String(Number($("results").dataset.searches || 0) + 1);
  } catch (err) {
    showError("The server did not answer: " + err);
  } finally {
    $("search-button").disabled = false;
  }
}

$("file-input").addEventListener("change", () => {
  const file = $("file-input").files[0];
  if (!file) return;
  document.querySelectorAll(".examples img").forEach((el) => el.classList.remove("selected"));
  setReference({ imageId: null, file: file, src: URL.createObjectURL(file), name: file.name });
});
$("query-form").addEventListener("submit", search);
loadExamples().catch((err) => showError("Could not load the index: " + err));
