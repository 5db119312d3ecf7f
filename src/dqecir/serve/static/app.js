// The search page: pick or upload a reference, type the change, show results and relevance.
"use strict";

const state = { imageId: null, file: null };
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

function setReference(src, name) {
  $("reference-img").src = src;
  $("reference-name").textContent = name;
  $("reference").classList.remove("hidden");
}

function selectExample(img, id) {
  document.querySelectorAll(".examples img").forEach((el) => el.classList.remove("selected"));
  img.classList.add("selected");
  state.imageId = id;
  state.file = null;
  $("file-input").value = "";
  setReference(img.src, id);
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
  const panel = $("relevance-panel");
  $("relevance").replaceChildren();
  if (!relevance) { panel.classList.add("hidden"); return; }
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
  panel.classList.remove("hidden");
}

function renderResults(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of results) {
    const card = document.createElement("figure");
    card.className = "result";
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
    grid.appendChild(card);
  }
}

async function search(event) {
  event.preventDefault();
  showError("");
  const text = $("text-input").value.trim();
  if (!state.imageId && !state.file) { showError("Pick or upload a reference image first."); return; }
  if (!text) { showError("Describe the change you want."); return; }
  const form = new FormData();
  form.append("text", text);
  form.append("k", $("k-select").value);
  if (state.file) form.append("image", state.file, state.file.name);
  else form.append("image_id", state.imageId);
  $("search-button").disabled = true;
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    const body = await response.json().catch(() => null);
    if (!response.ok) { showError(detailOf(body, response.status)); return; }
    renderRelevance(body.relevance);
    renderResults(body.results);
    $("took").textContent = "(" + body.results.length + " in " + body.took_ms + " ms)";
  } catch (err) {
    showError("The server did not answer: " + err);
  } finally {
    $("search-button").disabled = false;
  }
}

$("file-input").addEventListener("change", () => {
  const file = $("file-input").files[0];
  if (!file) return;
  state.file = file;
  state.imageId = null;
  document.querySelectorAll(".examples img").forEach((el) => el.classList.remove("selected"));
  setReference(URL.createObjectURL(file), file.name);
});
$("query-form").addEventListener("submit", search);
loadExamples().catch((err) => showError("Could not load the index: " + err));
