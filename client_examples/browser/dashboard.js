/**
 * dashboard.js: the live dashboard. Every panel is a query subscription of the official Convex browser client
 * (`convex/browser`, the global `convex` from /_static/convex/browser.bundle.js), the same client a Convex app
 * ships, so this page also shows that it works against Ripple unchanged. The DOM is updated in place (keyed rows)
 * so progress bars animate instead of flickering. Server data is only ever written with textContent or as
 * attributes, never innerHTML.
 *
 * URL shortcuts: ?token=<JWT>&project=<projectId>&generation=<generationId>&server=<base URL>
 *   &stallAfter=<seconds> (how long an unfinished job may go without a report before it shows as stalled)
 */

const TOKEN_KEY = "ripple.dashboard.token";
const $ = (id) => document.getElementById(id);

// ---- Small DOM helpers ------------------------------------------------------------------------

/** Create an element from a static template; data goes in afterwards through textContent. */
function fromTemplate(html) {
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  return template.content.firstElementChild;
}

function showError(node, error) {
  node.textContent = error?.message ?? String(error);
  node.hidden = false;
}

function hideError(node) {
  node.hidden = true;
  node.textContent = "";
}

/** Values may arrive as BigInt ($integer) or be absent; the UI only wants plain numbers. */
const num = (value) => (value === undefined || value === null ? null : Number(value));

/** 0–100, rounded: the text the tests and people read. */
const percent = (value) => Math.round(Math.min(100, Math.max(0, num(value) ?? 0)));

/** Seconds -> "45s", "1m 05s", "2h 03m 09s"; also how long ago a job was updated. */
export function formatEta(seconds) {
  const total = num(seconds);
  if (total === null || !Number.isFinite(total)) return "—";
  const s = Math.max(0, Math.round(total));
  const pad = (n) => String(n).padStart(2, "0");
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  if (h) return `${h}h ${pad(m)}m ${pad(sec)}s`;
  return m ? `${m}m ${pad(sec)}s` : `${sec}s`;
}

function setBar(bar, pct) {
  bar.firstElementChild.style.width = `${pct}%`;
  bar.setAttribute("aria-valuenow", String(pct));
}

/** Reuse one DOM node per key, drop the rest, and keep the server's order. */
function reconcile(list, cache, items, keyOf, create, update) {
  const seen = new Set();
  items.forEach((item, index) => {
    const key = keyOf(item, index);
    seen.add(key);
    let view = cache.get(key);
    if (!view) cache.set(key, (view = create()));
    update(view, item, index);
    if (list.children[index] !== view.root) list.insertBefore(view.root, list.children[index] ?? null);
  });
  for (const [key, view] of cache) {
    if (seen.has(key)) continue;
    view.destroy?.();
    view.root.remove();
    cache.delete(key);
  }
}

/** Only http(s) links from data, so a stored "javascript:" URL can never run. */
function safeHref(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

const storage = {
  get: () => { try { return localStorage.getItem(TOKEN_KEY); } catch { return null; } },
  set: (t) => { try { localStorage.setItem(TOKEN_KEY, t); } catch { /* private mode: session only */ } },
  clear: () => { try { localStorage.removeItem(TOKEN_KEY); } catch { /* nothing stored */ } },
};

// ---- URL parameters ----------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
if (params.has("token")) storage.set(params.get("token"));

/** Mirror the watched ids into the URL so a reload (or a shared link) shows the same thing. */
function setParam(name, value) {
  if (value) params.set(name, value);
  else params.delete(name);
  const query = params.toString();
  history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
}
setParam("token", null); // keep the JWT out of history, bookmarks and screenshots

// ---- Connection and auth -----------------------------------------------------------------------

const CONNECTION_LABELS = {
  connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…", fatal: "Stopped",
};

function renderConnection(state, detail) {
  const node = $("connection-status");
  node.dataset.state = state;
  node.querySelector(".label").textContent =
    state === "fatal" && detail ? `Stopped: ${detail}` : CONNECTION_LABELS[state] ?? state;
  node.title = detail ? String(detail) : "";
  document.body.dataset.connection = state;
}

/** The official client's ConnectionState -> the three states people need; it retries for ever, never gives up. */
function connectionOf(state) {
  if (state.isWebSocketConnected) return ["connected", ""];
  if (!state.hasEverConnected) return ["connecting", ""];
  const tries = state.connectionRetries;
  return ["reconnecting", tries ? `${tries} attempt${tries === 1 ? "" : "s"} so far` : ""];
}

const serverBase = params.get("server") || location.origin;
const client = (() => {
  try {
    // The client wants an absolute http(s) URL without a trailing slash (it appends /api/<version>/sync).
    const url = new URL(serverBase, location.href).href.replace(/\/+$/, "");
    return new convex.ConvexClient(url, { unsavedChangesWarning: false });
  } catch (error) {
    // A bad ?server= (or the bundle missing): say so instead of a blank page; panels stay empty.
    renderConnection("fatal", error?.message ?? String(error));
    return null;
  }
})();

if (client) {
  const show = () => renderConnection(...connectionOf(client.connectionState()));
  client.subscribeToConnectionState(show);
  show();
}

/** No-op unsubscribe for when there is no client, so callers need not check. */
function subscribe(path, args, onResult, onError) {
  if (!client) return () => {};
  return client.onUpdate(path, args, onResult, onError);
}

/**
 * What the sign-in shows: "none", "pending" (sent, not yet confirmed), "confirmed" or "error". The official
 * client reports only true/false, so a refusal is explained from the token itself where it can be (expired).
 */
let signedIn = false;
let currentToken = null;
/** Bumped by every setAuth, so a late answer about an older token changes nothing. */
let authGeneration = 0;

function jwtClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "=")));
  } catch {
    return null;
  }
}

function refusalReason(token) {
  const claims = jwtClaims(token);
  if (!claims) return "that is not a JWT; make one with: ripple token --sub alice";
  const who = claims.sub ?? "alice";
  if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) {
    return `the token expired; make a new one with: ripple token --sub ${who}`;
  }
  return `the server refused the token (another secret or issuer?); make one with: ripple token --sub ${who}`;
}

function renderAuth(state, detail) {
  const status = $("auth-status");
  status.dataset.state = state;
  const who = jwtClaims(currentToken ?? "")?.sub ?? null;
  status.textContent = {
    none: "Signed out",
    pending: "Signing in…",
    confirmed: who ? `Signed in as ${who}` : "Signed in",
    error: `Sign-in failed: ${detail ?? "token rejected"}`,
  }[state];
  if (state === "error") storage.clear(); // the server refused it; do not offer it again on reload
  const nowSignedIn = state === "pending" || state === "confirmed";
  $("token-input").hidden = nowSignedIn;
  $("sign-in").hidden = nowSignedIn;
  $("sign-out").hidden = !nowSignedIn;
  if (nowSignedIn !== signedIn) {
    signedIn = nowSignedIn;
    watchProject();
    watchChain();
  }
}

/**
 * Sign in with a fixed token (null signs out). The client asks `fetchToken` again when the server refuses the
 * token or it expires; a fixed token cannot be refreshed, so the same one comes back and the client gives up,
 * reporting false: shown as a failed sign-in with the reason.
 */
function signIn(token) {
  if (!client) return;
  const generation = ++authGeneration;
  currentToken = token;
  if (token === null) {
    client.setAuth(async () => null, () => {});
    renderAuth("none");
    return;
  }
  renderAuth("pending");
  client.setAuth(async () => token, (confirmed) => {
    if (generation !== authGeneration) return;
    if (confirmed) renderAuth("confirmed");
    else {
      currentToken = null;
      renderAuth("error", refusalReason(token));
    }
  });
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  $("token-input").value = "";
  storage.set(token);
  signIn(token);
});

$("sign-out").addEventListener("click", () => {
  storage.clear();
  signIn(null);
});

// ---- Video jobs --------------------------------------------------------------------------------

/** A worker reports several times a minute while it runs; two minutes of silence means it is likely stuck. */
const DEFAULT_STALL_AFTER_S = 120;
const stallAfterS = (() => {
  const given = Number(params.get("stallAfter"));
  return Number.isFinite(given) && given > 0 ? given : DEFAULT_STALL_AFTER_S;
})();
const FINISHED = new Set(["Completed", "Failed"]);

const jobViews = new Map();

/**
 * Server clock minus this browser's, in ms. updatedAt is the server's clock; a browser whose clock is minutes
 * ahead would otherwise show every running job as stalled. Read from the HTTP Date header (1 s resolution, so
 * offsets under 2 s are ignored); a server on another origin does not expose it to scripts, so there it stays 0.
 */
let clockOffsetMs = 0;
async function measureClockOffset() {
  if (new URL(serverBase, location.href).origin !== location.origin) return;
  try {
    const sent = Date.now();
    const response = await fetch(location.pathname, { method: "HEAD", cache: "no-store" });
    const received = Date.now();
    const serverMs = Date.parse(response.headers.get("Date") ?? "") + 500; // the header truncates to the second
    const offset = serverMs - (sent + received) / 2;
    if (Number.isFinite(offset) && Math.abs(offset) > 2000) clockOffsetMs = offset;
  } catch {
    // No Date header or no network: ages use this browser's clock, as if it were right.
  }
  for (const view of jobViews.values()) renderJobAge(view);
}
measureClockOffset();

function createJobView() {
  const root = fromTemplate(`
    <li class="job">
      <div class="job-head">
        <div class="job-name"><strong class="job-title"></strong> <span class="muted job-ids"></span></div>
        <span class="job-badges"><span class="badge stalled-badge" data-tone="warn" hidden>Stalled</span>
          <span class="badge job-status"></span></span>
      </div>
      <div class="job-progress">
        <div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"><span></span></div>
        <span class="pct"></span>
      </div>
      <div class="job-meta">
        <span>Stage <b class="stage"></b></span>
        <span>ETA <b class="eta"></b></span>
        <span class="updated"></span>
      </div>
      <p class="job-error" hidden></p>
    </li>`);
  const q = (selector) => root.querySelector(selector);
  return { root, title: q(".job-title"), ids: q(".job-ids"), status: q(".job-status"), bar: q(".bar"),
    pct: q(".pct"), stage: q(".stage"), eta: q(".eta"), error: q(".job-error"), updated: q(".updated"),
    stalledBadge: q(".stalled-badge"), updatedAt: null, finished: false };
}

/**
 * "updated 12s ago", and whether the job is stalled: unfinished and silent for longer than stallAfterS.
 * Runs on every result and every second, so a stalled job shows as stalled without any new data arriving
 * (which is exactly when it is stalled). Ages use this browser's clock against the server's updatedAt.
 */
function renderJobAge(view) {
  if (view.updatedAt === null) {
    view.updated.textContent = "";
    view.root.dataset.stalled = "false";
    view.stalledBadge.hidden = true;
    return;
  }
  const ageS = Math.max(0, (Date.now() + clockOffsetMs - view.updatedAt) / 1000);
  const stalled = !view.finished && ageS > stallAfterS;
  const text = ageS < 1 ? "updated just now" : `updated ${formatEta(Math.floor(ageS))} ago`;
  view.updated.textContent = stalled ? `Stalled: no report for ${formatEta(stallAfterS)}, ${text}` : text;
  view.updated.title = new Date(view.updatedAt).toLocaleString();
  view.root.dataset.stalled = String(stalled);
  view.stalledBadge.hidden = !stalled;
}

setInterval(() => {
  for (const view of jobViews.values()) renderJobAge(view);
}, 1000);

function statusTone(status) {
  if (status === "Completed" || status === "complete" || status === "success") return "ok";
  if (status === "Failed" || status === "failed") return "bad";
  if (status === "Queued" || status === "pending") return "idle";
  return "active";
}

function updateJobView(view, job) {
  const id = job.twitchId ?? job._id;
  view.root.dataset.testid = `job-${id}`;
  view.title.textContent = job.title || id;
  view.ids.textContent = `#${id}${job.jobId ? ` · job ${job.jobId}` : ""}`;
  view.status.textContent = job.status ?? "unknown";
  view.status.dataset.tone = statusTone(job.status);
  view.status.dataset.testid = `status-${id}`;
  view.bar.setAttribute("aria-label", `Progress of ${job.title || id}`);
  const done = job.status === "Completed";
  const pct = percent(job.progressPercentage ?? (done ? 100 : 0));
  setBar(view.bar, pct);
  view.bar.dataset.tone = statusTone(job.status);
  view.pct.textContent = `${pct}%`;
  view.pct.dataset.testid = `progress-${id}`;
  view.stage.textContent = job.currentStage || "—";
  view.stage.dataset.testid = `stage-${id}`;
  view.eta.textContent = done ? "done" : job.status === "Failed" ? "—" : formatEta(job.estimatedCompletionSeconds);
  view.eta.dataset.testid = `eta-${id}`;
  const failed = job.status === "Failed";
  view.error.hidden = !failed;
  view.error.dataset.testid = `error-${id}`;
  if (failed) {
    const retry = job.isRetryable ? ` (retryable${job.retryCount ? `, ${num(job.retryCount)} retries` : ""})` : "";
    view.error.textContent = `${job.errorType ?? "error"}: ${job.errorMessage ?? "no message"}${retry}`;
  }
  view.updatedAt = num(job.updatedAt ?? job.createdAt);
  view.finished = FINISHED.has(job.status);
  view.updated.dataset.testid = `updated-${id}`;
  view.stalledBadge.dataset.testid = `stalled-${id}`;
  renderJobAge(view);
}

subscribe("videos:listByStatus", {}, (jobs) => {
  hideError($("jobs-error"));
  const list = Array.isArray(jobs) ? jobs : [];
  $("jobs-empty").hidden = list.length > 0;
  $("jobs-empty").textContent = "No video jobs yet.";
  $("jobs-count").textContent = list.length ? `${list.length} job${list.length === 1 ? "" : "s"}` : "";
  reconcile($("jobs-list"), jobViews, list, (job, i) => job._id ?? job.twitchId ?? i, createJobView, updateJobView);
}, (error) => {
  $("jobs-empty").hidden = true;
  showError($("jobs-error"), error);
});

// ---- Project -----------------------------------------------------------------------------------

let projectWatch = [];
const storyboardViews = new Map();

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** `tone`: "ok" (complete), "active", or "bad"; true/false mean complete or not. */
function setMeter(name, progress, detail, tone) {
  const pct = percent(progress);
  const text = $(`${name}-progress`);
  text.textContent = `${pct}%`;
  text.dataset.value = String(num(progress) ?? pct);
  setBar($(`${name}-bar`), pct);
  $(`${name}-bar`).dataset.tone = tone === true ? "ok" : tone === false ? "active" : tone;
  $(`${name}-detail`).textContent = detail;
}

function shotMeter(name, progress, done, total, complete) {
  const pct = progress ?? (num(total) ? (100 * num(done)) / num(total) : 0);
  setMeter(name, pct, `${num(done) ?? 0} of ${num(total) ?? 0} shots${complete ? " · complete" : ""}`, complete);
}

/**
 * The project's images: the bar is the share finished (complete or failed, as the server counts it); the badges
 * say how many still wait, are being generated, or failed, so a failure is never hidden inside a full bar.
 */
function renderImageProgress(p) {
  const total = num(p.totalImages) ?? 0;
  const complete = num(p.imagesComplete) ?? 0;
  const counts = [
    ["pending", num(p.imagesPending) ?? 0, "pending", "idle"],
    ["processing", num(p.imagesProcessing) ?? 0, "generating", "active"],
    ["failed", num(p.imagesFailed) ?? 0, "failed", "bad"],
  ];
  const failed = num(p.imagesFailed) ?? 0;
  const finished = total > 0 && counts.every(([state, n]) => state === "failed" || n === 0);
  const tone = failed ? "bad" : finished ? "ok" : "active";
  // The meter is the share finished (complete or failed, as getProjectProgress counts it); the badges say how many
  // failed, so "2 of 2 finished" at 100% with "1 failed" reads as what happened.
  setMeter("images", p.imageProgress ?? 0, total ? `${complete + failed} of ${total} finished` : "no images yet", tone);
  const badges = $("images-counts");
  badges.replaceChildren();
  for (const [state, n, label, tone] of counts) {
    if (!n) continue;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.tone = tone;
    badge.dataset.testid = `images-${state}`;
    badge.textContent = `${n} ${label}`;
    badges.append(badge);
  }
  badges.hidden = badges.childElementCount === 0;
}

function renderProgress(progress) {
  hideError($("project-error"));
  if (!progress) {
    $("project-summary").textContent = "Project not found";
    return;
  }
  const p = progress;
  $("project-summary").textContent = `${plural(num(p.totalScenes) ?? 0, "scene")} · ${plural(num(p.totalShots) ?? 0, "shot")}`;
  shotMeter("selection", p.selectionProgress, p.shotsWithSelections, p.totalShots, p.isSelectionComplete);
  shotMeter("animation", p.animationProgress, p.shotsWithAnimations, p.totalShots, p.isAnimationComplete);
  renderImageProgress(p);
}

function createStoryboardView() {
  const root = fromTemplate(`
    <li class="shot">
      <a class="thumb" target="_blank" rel="noopener" hidden><img alt="" width="72" height="72" decoding="async"></a>
      <span class="thumb placeholder"></span>
      <div class="shot-text"><strong class="where"></strong> <span class="muted scene-title"></span>
        <div class="description"></div><div class="muted image"></div></div>
      <div class="shot-side"><a class="video" target="_blank" rel="noopener" hidden>video</a>
        <span class="badge anim"></span></div>
    </li>`);
  const q = (selector) => root.querySelector(selector);
  const view = { root, where: q(".where"), sceneTitle: q(".scene-title"), description: q(".description"),
    image: q(".image"), thumb: q("a.thumb"), img: q("a.thumb img"), placeholder: q(".placeholder"),
    video: q(".video"), anim: q(".anim"), statusKey: null, stopStatus: null, row: null };
  // A URL that does not load (moved, or a provider's link that expired) is shown as such, not as a broken icon.
  view.img.addEventListener("error", () => showPlaceholder(view, "broken", "Image did not load"));
  view.destroy = () => watchImageStatus(view, null);
  return view;
}

/** Numbers as people write them: 2, not 2.0 (they arrive as floats). */
const count = (value) => (num(value) === null ? "?" : String(num(value)));

const IMAGE_STATES = {
  none: "No image", unknown: "Not ready", pending: "Pending", processing: "Generating…", failed: "Failed",
  complete: "No file", broken: "Image did not load",
};

function showPlaceholder(view, state, text, title = "") {
  view.thumb.hidden = true;
  view.placeholder.hidden = false;
  view.placeholder.dataset.state = state;
  view.placeholder.textContent = text ?? IMAGE_STATES[state] ?? state;
  view.placeholder.title = title;
  view.placeholder.setAttribute("role", "img");
  view.placeholder.setAttribute("aria-label", `${view.where.textContent}: ${view.placeholder.textContent}`);
}

/**
 * The storyboard row carries the selected image's URL, which stays "" until the image is made; only then is its
 * status needed, so only then does the row follow that image's iteration (projectRedesign:getShotImages), and it
 * lets go as soon as the URL arrives. `key` null stops following.
 */
function watchImageStatus(view, key, shotId, iterationNumber, imageId) {
  if (view.statusKey === key) return;
  view.stopStatus?.();
  view.stopStatus = null;
  view.statusKey = key;
  if (key === null) return;
  view.stopStatus = subscribe("projectRedesign:getShotImages", { shotId, iterationNumber }, (images) => {
    const image = (Array.isArray(images) ? images : []).find((img) => img._id === imageId);
    if (!image) return showPlaceholder(view, "unknown");
    const error = image.status === "failed" ? image.metadata?.error ?? "" : "";
    showPlaceholder(view, IMAGE_STATES[image.status] ? image.status : "unknown", null, error);
  }, (error) => showPlaceholder(view, "unknown", null, error?.message ?? String(error)));
}

/** One row per shot (projectRedesign:getStoryboard): numbers, never ids, because ids mean nothing to a reader. */
function updateStoryboardView(view, row) {
  const where = `Scene ${count(row.sceneNumber)} · Shot ${count(row.shotNumber)}`;
  const slug = `${count(row.sceneNumber)}-${count(row.shotNumber)}`;
  view.root.dataset.testid = `shot-${slug}`;
  view.where.textContent = where;
  view.sceneTitle.textContent = row.sceneTitle ? `· ${row.sceneTitle}` : "";
  view.description.textContent = row.description ?? "";
  const image = row.selectedImage;
  const which = image ? `iteration ${count(image.iterationNumber)}, variant ${count(image.variantNumber)}` : "";
  view.image.textContent = image ? `selected: ${which}` : "no image selected";
  view.placeholder.dataset.testid = `image-state-${slug}`;
  view.img.dataset.testid = `thumb-${slug}`;
  const imageHref = image?.imageUrl ? safeHref(image.imageUrl) : null;
  if (imageHref) {
    watchImageStatus(view, null);
    view.thumb.href = imageHref;
    view.thumb.setAttribute("aria-label", `Open the selected image of ${where}`);
    view.img.alt = `Selected image of ${where}${row.description ? `: ${row.description}` : ""} (${which})`;
    if (view.img.getAttribute("src") !== imageHref) {
      view.img.src = imageHref;
      view.thumb.hidden = false;
      view.placeholder.hidden = true;
    }
  } else if (image) {
    if (view.statusKey === null) showPlaceholder(view, image.imageUrl ? "broken" : "unknown");
    view.img.removeAttribute("src");
    const shotId = row.shotId;
    watchImageStatus(view, `${shotId}|${image._id}`, shotId, num(image.iterationNumber), image._id);
  } else {
    watchImageStatus(view, null);
    view.img.removeAttribute("src");
    showPlaceholder(view, "none");
  }
  const selection = row.selection;
  const status = selection ? selection.animationStatus ?? "pending" : "not selected";
  view.anim.textContent = status;
  view.anim.dataset.tone = selection ? statusTone(status) : "idle";
  view.anim.title = selection ? "animation status" : "no storyboard selection for this shot yet";
  const href = selection?.animatedVideoUrl ? safeHref(selection.animatedVideoUrl) : null;
  view.video.hidden = !href;
  if (href) {
    view.video.href = href;
    view.video.setAttribute("aria-label", `Animated video of ${where}`);
  }
}

function clearStoryboard() {
  for (const view of storyboardViews.values()) view.destroy();
  storyboardViews.clear();
  $("storyboard-list").replaceChildren();
}

function renderStoryboard(rows) {
  hideError($("storyboard-error"));
  const list = Array.isArray(rows) ? rows : [];
  $("storyboard-empty").hidden = list.length > 0;
  $("storyboard-empty").textContent = "No shots in this project yet.";
  reconcile($("storyboard-list"), storyboardViews, list, (row, i) => row.shotId ?? i,
    createStoryboardView, updateStoryboardView);
}

/** (Re)subscribe the project panel; its queries need an identity, so it waits for sign-in. */
function watchProject() {
  for (const stop of projectWatch) stop();
  projectWatch = [];
  const projectId = $("project-input").value.trim();
  setParam("project", projectId);
  hideError($("project-error"));
  hideError($("storyboard-error"));
  clearStoryboard();
  $("project-summary").textContent = "";
  const ready = Boolean(projectId && signedIn);
  $("project-body").hidden = !ready;
  $("project-notice").hidden = ready;
  $("project-notice").textContent = signedIn ? "Enter a project id." : "Sign in to see project progress.";
  if (!ready) return;
  shotMeter("selection", 0, 0, 0, false);
  shotMeter("animation", 0, 0, 0, false);
  renderImageProgress({});
  $("storyboard-empty").hidden = false;
  $("storyboard-empty").textContent = "Loading storyboard…";
  projectWatch = [
    subscribe("projectRedesign:getProjectProgress", { projectId }, renderProgress,
      (error) => showError($("project-error"), error)),
    subscribe("projectRedesign:getStoryboard", { projectId }, renderStoryboard,
      (error) => { $("storyboard-empty").hidden = true; showError($("storyboard-error"), error); }),
  ];
}

$("project-form").addEventListener("submit", (event) => {
  event.preventDefault();
  watchProject();
});

// ---- Refinement chain --------------------------------------------------------------------------

let chainWatch = null;
const chainViews = new Map();

function createChainView() {
  const root = fromTemplate(`
    <li class="version">
      <div class="version-head">
        <strong class="label"></strong>
        <span class="badge status"></span>
        <span class="muted gen-id"></span>
      </div>
      <p class="prompt"></p>
      <p class="job-error" hidden></p>
      <pre class="code"><code></code></pre>
    </li>`);
  const q = (selector) => root.querySelector(selector);
  return { root, label: q(".label"), status: q(".status"), id: q(".gen-id"), prompt: q(".prompt"),
    error: q(".job-error"), pre: q(".code"), code: q(".code code") };
}

function updateChainView(view, gen, index) {
  view.root.dataset.testid = `chain-item-${index}`;
  view.label.textContent = index === 0 ? "Original" : `V${index}`;
  view.status.textContent = gen.status ?? "pending";
  view.status.dataset.tone = statusTone(gen.status ?? "pending");
  view.status.dataset.testid = `chain-status-${index}`;
  view.id.textContent = gen._id ?? "";
  view.prompt.textContent = (index === 0 ? gen.prompt : gen.refinementPrompt ?? gen.prompt) ?? "";
  view.error.hidden = gen.status !== "failed";
  view.error.textContent = gen.status === "failed" ? gen.errorMessage ?? "Refinement failed" : "";
  const code = gen.code || gen.rawCode || "";
  if (view.code.textContent !== code) {
    // Follow the stream only if the reader was already at the bottom.
    const pre = view.pre;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    view.code.textContent = code;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  view.pre.dataset.testid = `chain-code-${index}`;
  view.pre.dataset.empty = code ? "false" : "true";
  view.pre.dataset.placeholder = gen.status === "pending" ? "Waiting for code…" : "No code";
}

function renderChain(chain) {
  hideError($("chain-error"));
  const list = Array.isArray(chain) ? chain : [];
  $("chain-summary").textContent = list.length ? `${list.length} version${list.length === 1 ? "" : "s"}` : "";
  $("chain-notice").hidden = list.length > 0;
  $("chain-notice").textContent = "No generation with this id.";
  reconcile($("chain-list"), chainViews, list, (_, i) => i, createChainView, updateChainView);
}

/** (Re)subscribe the chain panel; like the project panel it needs a signed-in user. */
function watchChain() {
  chainWatch?.();
  chainWatch = null;
  const generationId = $("chain-input").value.trim();
  setParam("generation", generationId);
  hideError($("chain-error"));
  $("chain-list").replaceChildren();
  chainViews.clear();
  $("chain-summary").textContent = "";
  const ready = Boolean(generationId && signedIn);
  $("chain-notice").hidden = false;
  $("chain-notice").textContent = !signedIn ? "Sign in to see refinement chains."
    : ready ? "Loading chain…" : "Enter a generation id.";
  if (!ready) return;
  chainWatch = subscribe("generations:getRefinementChain", { generationId }, renderChain, (error) => {
    $("chain-notice").hidden = true;
    showError($("chain-error"), error);
  });
}

$("chain-form").addEventListener("submit", (event) => {
  event.preventDefault();
  watchChain();
});

// ---- Start -------------------------------------------------------------------------------------

$("project-input").value = params.get("project") ?? "";
$("chain-input").value = params.get("generation") ?? "";
renderAuth("none");
watchProject();
watchChain();
const savedToken = storage.get();
if (savedToken) signIn(savedToken); // renders "pending", which subscribes the panels
