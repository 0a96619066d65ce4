"""`serve`'s pages: the search page, the status page and the login page, each self-contained.

Scripts and styles are inline, and the content security policy allows exactly these by their
sha256 (`content_security_policy`), so an injected script would not run even if one slipped in.
Every answer is read defensively: an error from a proxy (a 413 page), Starlette's own plain-text
errors and an unreachable server are shown as sentences, never a silently unchanged page.
"""

from __future__ import annotations

import base64
import hashlib
import html

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
header { padding: 16px 24px; background: #fff; border-bottom: 1px solid #ddd; display: flex; flex-wrap: wrap; gap: 12px; align-items: center; }
header form { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; flex: 1; }
#q { flex: 1; min-width: 240px; font-size: 18px; padding: 8px 12px; border: 1px solid #bbb; border-radius: 6px; }
button, label.drop { font-size: 15px; padding: 8px 14px; border-radius: 6px; border: 1px solid #888; background: #fff; cursor: pointer; }
label.drop.over { background: #e7f0ff; border-color: #3a6fd8; }
input[type=date] { font-size: 14px; padding: 6px; }
#notice:empty { display: none; }
#notice { padding: 10px 24px; background: #fff4d6; border-bottom: 1px solid #e6c86e; font-size: 14px; }
#summary { padding: 10px 24px; color: #555; font-size: 14px; }
body.busy #summary::after { content: " ⏳"; }
body.busy #grid { opacity: .5; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 14px; padding: 0 24px 24px; }
figure { margin: 0; background: #fff; border-radius: 8px; overflow: hidden; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
figure img { width: 100%; height: 200px; object-fit: cover; display: block; background: #eee; }
figcaption { padding: 8px 10px; font-size: 13px; display: flex; justify-content: space-between; gap: 6px; align-items: baseline; flex-wrap: wrap; }
.when { color: #666; }
figcaption a { color: #3a6fd8; text-decoration: none; white-space: nowrap; }
.score { font-weight: 600; }
.error { color: #b00020; }
table td { padding: 4px 12px 4px 0; vertical-align: top; }
main.narrow { margin: 24px; }
"""

# Shared by the search and status pages: one reader of answers, so both say errors the same way.
COMMON_SCRIPT = """
function line(element, text, isError) {
  element.textContent = "";
  const span = document.createElement("span");
  if (isError) span.className = "error";
  span.textContent = text;
  element.appendChild(span);
}
async function ask(url, init) {
  let response;
  try { response = await fetch(url, init); }
  catch (error) { throw new Error("Cannot reach the server: is it still running? (" + error.message + ")"); }
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("Signing in again…");
  }
  let data = null;
  try { data = await response.json(); } catch (error) { data = null; }
  if (!response.ok) {
    const why = data && data.error ? data.error : `The server answered ${response.status} ${response.statusText || ""}`.trim() +
      (response.status === 413 ? ": the photo is too large to send." : ".");
    throw new Error(why);
  }
  if (data === null) throw new Error("The server's answer was not JSON; is a proxy in between?");
  return data;
}
"""

SEARCH_SCRIPT = """
const grid = document.getElementById("grid"), summary = document.getElementById("summary"), notice = document.getElementById("notice");
let last = null, serial = 0;  // the last query, re-run when the dates change; answers to older queries are dropped
function range() {
  const p = new URLSearchParams({top: "24"});
  for (const key of ["since", "until"]) { const v = document.getElementById(key).value; if (v) p.set(key, v); }
  return p;
}
function show(data, asked) {
  grid.innerHTML = "";
  // The dates as asked: the API's `until` is the exclusive end, the next day's midnight for a whole day.
  summary.textContent = `${data.query} · ${data.model} / ${data.stage} · ${data.hits.length} of ${data.considered} photos` +
    (asked.has("since") || asked.has("until") ? ` (${asked.get("since") || "…"} – ${asked.get("until") || "…"})` : "") +
    (data.hits.length ? "" : " · no photo matches");
  for (const hit of data.hits) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    figure.innerHTML = '<a target="_blank"><img loading="lazy" alt=""></a><figcaption><span><span class="score"></span> <span class="when"></span></span><a href="#" class="similar">相似 · more like this</a></figcaption>';
    figure.querySelector("a").href = hit.photo;
    figure.querySelector("img").src = hit.thumb;
    figure.querySelector("img").title = hit.path;
    figure.querySelector(".score").textContent = hit.score.toFixed(3);
    figure.querySelector(".when").textContent = hit.time.slice(0, 10);
    figure.querySelector(".similar").addEventListener("click", event => { event.preventDefault(); run({similar: hit.id}); });
    grid.appendChild(figure);
  }
}
async function run(query) {
  last = query;
  const mine = ++serial, p = range();
  document.body.classList.add("busy");
  summary.textContent = "搜索中 · searching…";
  try {
    let data;
    if (query.text !== undefined) { p.set("q", query.text); data = await ask("/api/search?" + p); }
    else if (query.similar !== undefined) data = await ask(`/api/similar/${query.similar}?` + p);
    else { const body = new FormData(); body.append("image", query.file); data = await ask("/api/search/image?" + p, {method: "POST", body}); }
    if (mine === serial) show(data, p);
  } catch (error) {
    if (mine === serial) { grid.innerHTML = ""; line(summary, error.message, true); }
  } finally {
    if (mine === serial) document.body.classList.remove("busy");
  }
}
ask("/api/status").then(s => {
  const notes = [s.problem, s.weights_warning && "Warning: " + s.weights_warning,
    s.photos === 0 && `The index holds no photos yet. On the server, run: python -m converters index PHOTOS --index ${s.index.replace(/\\/index\\.sqlite$/, "")}`];
  notice.textContent = notes.filter(Boolean).join(" ");
}).catch(error => line(notice, error.message, true));
document.getElementById("text").addEventListener("submit", event => { event.preventDefault(); run({text: document.getElementById("q").value}); });
for (const key of ["since", "until"]) document.getElementById(key).addEventListener("change", () => last && run(last));
const drop = document.getElementById("drop"), file = document.getElementById("file");
file.addEventListener("change", () => file.files[0] && run({file: file.files[0]}));
drop.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", event => { event.preventDefault(); drop.classList.remove("over"); if (event.dataTransfer.files[0]) run({file: event.dataTransfer.files[0]}); });
"""

STATUS_SCRIPT = """
const facts = document.getElementById("facts");
ask("/api/status").then(s => {
  const rows = [["index", s.index], ["photos", s.photos], ["loaded", s.loaded_photos], ["model", s.artifact.model],
    ["artifact", `${s.artifact.stage} (${s.artifact.id.slice(0, 12)})`], ["bundle", s.bundle], ["weights", s.weights_warning || "trained"],
    ["problem", s.problem || "none"], ["folders", s.roots.join(", ") || "none yet"],
    ["last run", s.last_run ? `${s.last_run.root}: ${s.last_run.started} → ${s.last_run.finished || "not finished"}, ${s.last_run.added} added, ${s.last_run.updated} updated, ${s.last_run.removed} removed` : "none"]];
  for (const [key, value] of rows) { const tr = document.createElement("tr"); tr.innerHTML = "<td></td><td></td>";
    tr.children[0].textContent = key; tr.children[1].textContent = value; facts.appendChild(tr); }
  for (const reason of s.skipped) { const li = document.createElement("li"); li.textContent = reason; document.getElementById("skipped").appendChild(li); }
}).catch(error => line(document.getElementById("status-error"), error.message, true));
"""

SCRIPTS = (COMMON_SCRIPT, SEARCH_SCRIPT, STATUS_SCRIPT)


def _document(title: str, body: str, *scripts: str) -> str:
    tags = "".join(f"<script>{script}</script>" for script in scripts)
    return (f'<!doctype html>\n<html lang="zh"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>{body}{tags}</body></html>\n")


PAGE = _document("cnclip · 照片搜索", """
<header>
  <form id="text">
    <input id="q" name="q" placeholder="海边的日落 · 去年的身份证 · a cat on a sofa" autocomplete="off">
    <button type="submit" id="go">搜索</button>
    <label class="drop" id="drop">拖入照片 / drop a photo<input type="file" id="file" accept="image/*" hidden></label>
    <span>从 <input type="date" id="since"> 到 <input type="date" id="until"></span>
  </form>
  <a href="/status">index status</a>
  <form method="post" action="/logout"><button type="submit" id="sign-out">sign out</button></form>
</header>
<div id="notice" role="status"></div>
<div id="summary" role="status" aria-live="polite"></div>
<div id="grid"></div>
""", COMMON_SCRIPT, SEARCH_SCRIPT)

STATUS_PAGE = _document("cnclip · index status", """
<main class="narrow"><h1>Index status</h1><p id="status-error"></p><table id="facts"></table>
<h2>Skipped files</h2><ul id="skipped"></ul><p><a href="/">search</a></p></main>
""", COMMON_SCRIPT, STATUS_SCRIPT)


def login_page(next_path: str, error: str | None) -> str:
    message = f'<p class="error" id="login-error">{html.escape(error)}</p>' if error else ""
    return _document("cnclip · sign in", f"""
<main class="narrow"><h1>照片搜索 · sign in</h1>{message}
<form method="post" action="/login">
  <input type="hidden" name="next" value="{html.escape(next_path)}">
  <label>Password <input type="password" name="password" id="password" autocomplete="current-password" autofocus required></label>
  <button type="submit" id="sign-in">Sign in</button>
</form></main>
""")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy() -> str:
    """Only this server's own scripts (by hash), styles, images and fetches; no framing, no foreign forms."""
    scripts = " ".join(_sha256(script) for script in SCRIPTS)
    return (f"default-src 'none'; script-src {scripts}; style-src {_sha256(STYLE)}; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
