"""The clinician's page, served by the same app: inline HTML, CSS and JS (nothing from a CDN)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mammolens</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
  body { margin: 0; }
  [hidden] { display: none !important; }
  header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; gap: 16px; align-items: baseline; }
  header h1 { font-size: 20px; margin: 0; }
  header small { opacity: .75; }
  main { display: grid; grid-template-columns: minmax(320px, 1fr) 360px; gap: 20px; padding: 20px 24px; }
  .panel { background: #fff; border-radius: 8px; padding: 16px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  #drop { border: 2px dashed #8a93a6; border-radius: 8px; padding: 28px; text-align: center; cursor: pointer; }
  #drop.over { background: #e8eefc; border-color: #3b6fd8; }
  #viewer { margin-top: 16px; text-align: center; background: #2a2f3a; padding: 8px; border-radius: 6px; }
  #stack { position: relative; display: inline-block; }
  #stack img { display: block; max-width: 100%; max-height: 70vh; }
  #overlay { position: absolute; left: 0; top: 0; width: 100%; height: 100%; opacity: .45; }
  .row { display: flex; justify-content: space-between; padding: 4px 0; border-bottom: 1px solid #eef0f3; }
  #decision { font-size: 26px; font-weight: 700; margin: 8px 0; }
  #decision.pos { color: #b3261e; } #decision.neg { color: #1b7f3b; } #decision.close { color: #8a5a00; }
  .caution { background: #fff4d6; border-left: 4px solid #d99a00; padding: 8px 10px; margin: 8px 0; font-size: 14px; }
  .caution.grave { background: #fde8e6; border-left-color: #b3261e; }
  #legend { margin-top: 8px; font-size: 13px; color: #333; }
  #legend .ramp { height: 12px; border-radius: 3px; background: linear-gradient(to right, #00007f, #0000ff, #007fff,
    #00ffff, #7fff7f, #ffff00, #ff7f00, #ff0000, #7f0000); }
  #legend .ends { display: flex; justify-content: space-between; }
  .bar { height: 10px; background: #e5e7eb; border-radius: 5px; overflow: hidden; }
  .bar > div { height: 100%; background: #3b6fd8; }
  #status { min-height: 1.4em; color: #555; } #status.error { color: #b3261e; }
  label { display: block; margin-top: 8px; font-size: 14px; }
  input[type=text], input[type=password] { width: 100%; box-sizing: border-box; padding: 6px; }
  footer { padding: 0 24px 20px; font-size: 12px; color: #666; }
</style>
</head>
<body>
<header><h1>mammolens</h1><small id="model-line">loading model card...</small></header>
<main>
  <section class="panel">
    <div id="drop" tabindex="0">Drop a mammogram here (DICOM, PNG, JPEG, PGM, TIFF) or click to choose a file
      <input id="file" type="file" hidden accept=".dcm,.dicom,.png,.jpg,.jpeg,.pgm,.tif,.tiff,application/dicom,image/*">
    </div>
    <label id="other-box" hidden>Other film of the same woman (<span id="other-need">optional</span>; choose it before the film)
      <input id="other" type="file" accept=".dcm,.dicom,.png,.jpg,.jpeg,.pgm,.tif,.tiff,application/dicom,image/*"></label>
    <label id="token-box" hidden>Access token <input id="token" type="password" autocomplete="off"></label>
    <fieldset id="roi-box" hidden><legend>Lesion (original-image pixels)</legend>
      <label>x <input id="roi-x" type="number" min="0" step="any" placeholder="512"></label>
      <label>y <input id="roi-y" type="number" min="0" step="any" placeholder="400"></label>
      <label>r <input id="roi-r" type="number" min="0" step="any" placeholder="40"></label></fieldset>
    <p id="status" role="status"></p>
    <div id="viewer" hidden><div id="stack"><img id="preview" alt="uploaded mammogram"><img id="overlay" alt="heatmap" hidden></div></div>
    <label id="opacity-box" hidden>Heatmap opacity <input id="opacity" type="range" min="0" max="100" value="45"></label>
    <div id="legend" hidden><div id="legend-text"></div><div class="ramp"></div>
      <div class="ends"><span>0: no evidence</span><span>1: this film's strongest</span></div></div>
  </section>
  <aside>
    <section class="panel" id="result" hidden>
      <div>Decision at threshold <span id="threshold"></span></div>
      <div id="decision"></div>
      <div id="close" class="caution" hidden></div>
      <div id="probability"></div>
      <div id="result-warnings" class="caution grave" hidden></div>
      <div id="probs"></div>
    </section>
    <section class="panel" id="card" style="margin-top:16px"><h3 style="margin-top:0">Model card</h3>
      <div id="card-warnings" class="caution grave" hidden></div><div id="card-body"></div></section>
  </aside>
</main>
<footer>Research software, not a medical device. Images are processed in memory and not stored.</footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let card = null;
function headers() {
  const t = $("token").value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}
function caution(el, lines) {  // one line per warning; hidden when there are none
  el.replaceChildren(...lines.map((t) => { const d = document.createElement("div"); d.textContent = "\\u26a0 " + t; return d; }));
  el.hidden = !lines.length;
}
const band = () => card && card.threshold_band;  // the threshold's uncertainty, recorded at training
function status(text, error) { $("status").textContent = text; $("status").className = error ? "error" : ""; }
function row(k, v) {
  const d = document.createElement("div"); d.className = "row";
  const a = document.createElement("span"); a.textContent = k;
  const b = document.createElement("span"); b.textContent = v;
  d.append(a, b); return d;
}
async function loadCard() {
  const r = await fetch("/v1/model", { headers: headers() });
  if (r.status === 401) { $("token-box").hidden = false; $("model-line").textContent = "token required"; return; }
  card = await r.json();
  $("model-line").textContent = card.architecture + " \\u00b7 " + card.task + " \\u00b7 " + card.model_id +
    (card.warnings.length ? " \\u00b7 \\u26a0 see the model card" : "");
  caution($("card-warnings"), card.warnings);
  $("roi-box").hidden = !card.input.needs_roi;
  $("other-box").hidden = !card.input.other_film;  // bilateral bundles read a film with the woman's other film
  $("other-need").textContent = card.input.needs_other_film ? "required" : "optional";
  const body = $("card-body"); body.replaceChildren();
  body.append(row("model", card.model_id), row("task", card.task), row("classes", card.classes.join(", ")),
              row("threshold", card.threshold.toFixed(3)),
              row("threshold band", band() ? band()[0].toFixed(3) + " \\u2013 " + band()[1].toFixed(3) : "not recorded"),
              row("input", (card.input.model_input || []).join("\\u00d7")),
              row("created", card.version || "?"), row("explanations", card.explanations ? "yes" : "no"),
              row("backend", card.backend), row("engine", card.engine));
  const guard = card.guard_band;  // int8 with its fp32 twin: films this near the threshold are re-scored in fp32
  if (guard) body.append(row("guard band", "\\u00d7" + guard.factor + ": fp32 within " + guard.margin.toPrecision(2)));
  for (const [part, m] of Object.entries(card.metrics || {})) {
    if (m && typeof m === "object" && typeof m.auc === "number") body.append(row("held-out " + part + " AUC", m.auc.toFixed(3)));
  }
}
let current = null;  // the film last chosen: choosing the other film afterwards scores it again
async function send(file) {
  current = file;
  if (!card) await loadCard();
  status("scoring " + (file.size / 1024).toFixed(0) + " KiB ...");
  const form = new FormData();
  form.append("file", file);
  const other = card && card.input.other_film ? $("other").files[0] : null;
  if (other) form.append("other", other);
  form.append("preview", "true");
  form.append("heatmap", card && card.explanations ? "true" : "false");
  for (const k of ["x", "y", "r"]) {
    const v = $("roi-" + k).value.trim();
    if (v) form.append(k, v);
  }
  const r = await fetch("/v1/predict", { method: "POST", body: form, headers: headers() });
  const body = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) { status("error " + r.status + ": " + (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)), true); return; }
  show(body);
}
function show(res) {
  $("viewer").hidden = false;
  $("preview").src = "data:image/png;base64," + res.preview_png;
  const overlay = $("overlay");
  overlay.hidden = !res.overlay_png; $("opacity-box").hidden = !res.overlay_png; $("legend").hidden = !res.heatmap;
  if (res.overlay_png) overlay.src = "data:image/png;base64," + res.overlay_png;
  if (res.heatmap) $("legend-text").textContent = "Heatmap: " + res.heatmap.method + ", evidence for \\u201c" +
    res.heatmap.class + "\\u201d, relative to this film (not a probability)";
  const classes = Object.keys(res.probabilities);
  const positive = classes[classes.length - 1];
  $("threshold").textContent = res.threshold.toFixed(3);
  $("decision").textContent = res.decision;
  const close = res.close_to_threshold === true;
  $("decision").className = classes.length === 2 ? (close ? "close" : res.decision === positive ? "pos" : "neg") : "";
  $("close").hidden = !close;
  if (close) $("close").textContent = "Close to the threshold: P(" + positive + ") " + res.probabilities[positive].toFixed(3) +
    " lies inside this model's threshold band " + band()[0].toFixed(3) + " \\u2013 " + band()[1].toFixed(3) +
    ", where its validation films could fall on either side. Treat this decision as uncertain.";
  caution($("result-warnings"), card ? card.warnings : []);
  $("probability").textContent = "P(" + positive + ") = " + res.probabilities[positive].toFixed(3);
  const probs = $("probs"); probs.replaceChildren();
  for (const c of classes) {
    const bar = document.createElement("div"); bar.className = "bar";
    const fill = document.createElement("div"); fill.style.width = (100 * res.probabilities[c]).toFixed(1) + "%";
    bar.append(fill); probs.append(row(c, res.probabilities[c].toFixed(3)), bar);
  }
  $("result").hidden = false;
  status(res.image.format.toUpperCase() + " " + res.image.width + "\\u00d7" + res.image.height + " scored by " + res.model.id +
         " (" + res.engine + ")" + (res.other_film ? " with the other film" : ""));
}
$("opacity").addEventListener("input", (e) => { $("overlay").style.opacity = e.target.value / 100; });
$("drop").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (e) => { if (e.target.files[0]) send(e.target.files[0]); });
$("other").addEventListener("change", () => { if (current) send(current); });
$("token").addEventListener("change", () => loadCard());
for (const ev of ["dragenter", "dragover"]) $("drop").addEventListener(ev, (e) => { e.preventDefault(); $("drop").classList.add("over"); });
for (const ev of ["dragleave", "drop"]) $("drop").addEventListener(ev, (e) => { e.preventDefault(); $("drop").classList.remove("over"); });
$("drop").addEventListener("drop", (e) => { if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); });
loadCard().catch((e) => status("cannot load the model card: " + e, true));
</script>
</body>
</html>
"""
