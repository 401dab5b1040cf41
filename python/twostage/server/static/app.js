// The search page: plain DOM, no build step. Text from the server is only ever set with
// textContent, never parsed as HTML, so a document cannot inject markup into the page.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "content-type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.authorization = "Bearer " + token;
  return h;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function render(resp) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of resp.hits) {
    const li = el("li", "hit");
    li.dataset.id = hit.id;
    li.dataset.reranked = String(hit.reranked);
    const head = el("div");
    head.append(el("span", "title", hit.title || hit.id));
    head.append(el("span", "badge " + (hit.reranked ? "reranked" : "first"),
      hit.reranked ? "reranked" : "first stage"));
    li.append(head);
    li.append(el("div", "snippet", hit.snippet));
    // score: the final one (reranked: the cross-encoder fused with the first-stage signals);
    // model: the cross-encoder's own output. Ranks count from 1, as in the JSON and the CLI.
    const model = hit.reranker_score == null ? "" : ` (model ${hit.reranker_score.toFixed(3)})`;
    li.append(el("div", "meta",
      `score ${hit.score.toFixed(3)}${model} · first-stage rank ${hit.first_stage_rank}` +
      ` (${hit.first_stage_score.toFixed(3)}) · id ${hit.id}`));
    list.append(li);
  }
  for (const cell of document.querySelectorAll("#timings td")) {
    cell.textContent = resp.timings[cell.dataset.stage].toFixed(1);
  }
  $("timings").hidden = false;
  let how = resp.reranker_version
    ? `reranked by ${resp.reranker_version}: ${resp.scored} of ${resp.candidates} candidates`
    : "first stage only";
  how += ` · ${resp.first_stage} first stage`;
  if (resp.degraded) how += ` — degraded: ${resp.degraded_reason}`;
  $("summary").textContent = `${resp.hits.length} hits · ${how} · ${resp.timings.total.toFixed(1)} ms`;
}

async function search(event) {
  event.preventDefault();
  const query = $("q").value;
  if (!query.trim()) return;
  showError("");
  $("summary").textContent = "searching…";
  const body = {
    query,
    k: Number($("k").value) || 10,
    rerank: $("rerank").checked,
  };
  // Empty fields: the server's defaults (the same the CLI and the Python API use).
  if ($("depth").value !== "") body.depth = Number($("depth").value);
  if ($("budget").value !== "") body.budget_ms = Number($("budget").value);
  if ($("first-stage").value) body.first_stage = $("first-stage").value;
  try {
    const r = await fetch("/search", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const data = await r.json();
    if (!r.ok) {
      $("summary").textContent = "";
      showError(`${data.error.code}: ${data.error.message}`);
      return;
    }
    render(data);
  } catch (err) {
    $("summary").textContent = "";
    showError("request failed: " + err);
  }
}

async function status() {
  try {
    const r = await fetch("/readyz");
    const d = await r.json();
    $("status").textContent = r.ok
      ? `${d.documents} documents · reranker ${d.reranker || "none"}`
      : d.error.message;
    if (r.ok && d.defaults) {
      $("depth").placeholder = d.defaults.depth;
      $("budget").placeholder = d.defaults.budget_ms;
      $("first-stage").options[0].textContent = `server default (${d.defaults.first_stage})`;
    }
  } catch (err) {
    $("status").textContent = "server unreachable";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  status();
});
