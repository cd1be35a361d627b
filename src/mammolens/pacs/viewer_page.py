"""The study viewer's page: inline HTML, CSS and JS (nothing from a CDN)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mammolens study</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
  body { margin: 0; } [hidden] { display: none !important; }
  header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; gap: 12px; align-items: center; }
  header h1 { font-size: 20px; margin: 0 16px 0 0; }
  header input { width: 520px; padding: 6px; }
  main { display: grid; grid-template-columns: 1fr 320px; gap: 20px; padding: 20px 24px; }
  #views { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
  figure { margin: 0; background: #2a2f3a; color: #fff; padding: 8px; border-radius: 6px; text-align: center; }
  .stack { position: relative; display: inline-block; }
  .stack img { display: block; max-width: 100%; max-height: 40vh; }
  .stack img.heat { position: absolute; left: 0; top: 0; width: 100%; height: 100%; opacity: .5; }
  .panel { background: #fff; border-radius: 8px; padding: 16px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  .row { display: flex; justify-content: space-between; padding: 4px 0; border-bottom: 1px solid #eef0f3; }
  #status.error { color: #b3261e; }
</style>
</head>
<body>
<header><h1>mammolens</h1><input id="uid" placeholder="StudyInstanceUID" aria-label="StudyInstanceUID">
  <button id="open">Open</button></header>
<main>
  <section><p id="status" role="status"></p><div id="views"></div></section>
  <aside class="panel" id="result" hidden><h3 style="margin-top:0">Exam</h3><div id="exam"></div>
    <h3>Breasts</h3><div id="breasts"></div>
    <p style="font-size:12px;color:#666">UNVERIFIED computer-aided result, not a diagnosis on its own.</p></aside>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function status(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function row(k, v) {
  const d = document.createElement("div"); d.className = "row";
  const a = document.createElement("span"); a.textContent = k;
  const b = document.createElement("span"); b.textContent = v;
  d.append(a, b); return d;
}
function summary(unit) {
  const [cls, p] = Object.entries(unit.probabilities)[0];
  return unit.decision + " (P(" + cls + ") = " + p.toFixed(3) + ")";
}
async function open(uid) {
  status("loading study ...");
  $("views").replaceChildren(); $("result").hidden = true;
  const r = await fetch("/v1/studies/" + encodeURIComponent(uid));
  const body = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) { status("error " + r.status + ": " + body.detail, true); return; }
  for (const v of body.views) {
    const fig = document.createElement("figure"); fig.className = "view";
    fig.dataset.view = v.laterality + "-" + v.view;
    const stack = document.createElement("div"); stack.className = "stack";
    const img = document.createElement("img"); img.className = "film"; img.alt = v.laterality + "-" + v.view;
    img.src = "data:image/png;base64," + v.image_png; stack.append(img);
    if (v.heatmap_png) {
      const heat = document.createElement("img"); heat.className = "heat"; heat.alt = "heatmap";
      heat.src = "data:image/png;base64," + v.heatmap_png; stack.append(heat);
    }
    const cap = document.createElement("figcaption");
    cap.textContent = v.laterality + "-" + v.view + (v.results ? ": " + v.results.map(summary).join("; ") : "");
    fig.append(stack, cap); $("views").append(fig);
  }
  $("exam").replaceChildren(...Object.entries(body.exam).map(([k, u]) => row(k, summary(u))));
  $("breasts").replaceChildren(...Object.entries(body.breasts).map(([k, u]) => row(k, summary(u))));
  $("result").hidden = !body.processed;
  status(body.views.length + " views" + (body.processed ? "" : "; not processed by the node yet"));
}
$("open").addEventListener("click", () => open($("uid").value.trim()));
$("uid").addEventListener("keydown", (e) => { if (e.key === "Enter") open($("uid").value.trim()); });
const start = new URLSearchParams(location.search).get("study");
if (start) { $("uid").value = start; open(start); }
</script>
</body>
</html>
"""
