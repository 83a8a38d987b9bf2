// The admin console's shell: the admin key, one official Convex client, and the sections.
//
// Every section is a module in ./views/ exporting `mount(root, ctx)`, which fills `root` and returns a function
// that tears down what it started (subscriptions, streams). `ctx` is what the sections share:
//   ctx.client     the official `convex/browser` ConvexClient, authenticated as admin (live through /api/sync)
//   ctx.adminKey   the key, for the HTTP API: `Authorization: Convex <key>`
//   ctx.api(path, body)  POST to the HTTP API as admin; resolves to the parsed reply, throws an Error with
//                  `.requestId` and `.status` on failure
//   ctx.navigate(section, params)  opens another section (ids link across sections this way)
// The location hash holds the section and its parameters (`#data?table=videos`), so a view can be linked to.

const SECTIONS = [
  // [name, label]; a section's module is ./views/<name>.js
  ["data", "Data"],
  ["functions", "Functions"],
  ["logs", "Logs"],
  ["schedules", "Schedules"],
  ["files", "Files"],
  ["health", "Health"],
];
const KEY_STORAGE = "ripple.adminKey";

const $ = (id) => document.getElementById(id);
let client = null;
let unmount = null;

function parseHash() {
  const [name, query] = location.hash.replace(/^#/, "").split("?");
  const known = SECTIONS.some(([section]) => section === name);
  return { name: known ? name : SECTIONS[0][0], params: new URLSearchParams(query || "") };
}

async function api(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Convex ${sessionStorage.getItem(KEY_STORAGE)}` },
    body: JSON.stringify(body ?? {}),
  });
  const reply = await response.json().catch(() => ({}));
  if (!response.ok || reply.status === "error") {
    const error = new Error(reply.errorMessage || reply.message || `HTTP ${response.status}`);
    error.status = response.status;
    error.requestId = reply.requestId || response.headers.get("x-request-id");
    error.data = reply.errorData;
    throw error;
  }
  return reply;
}

async function checkKey(key) {
  // The log stream asks for the admin key and answers at once, so its status tells whether the key is good.
  const abort = new AbortController();
  const response = await fetch("/api/logs?level=error", {
    headers: { Authorization: `Convex ${key}` },
    signal: abort.signal,
  });
  abort.abort();
  if (response.status === 401 || response.status === 403) throw new Error("That admin key is not valid.");
  if (!response.ok) throw new Error(`The server answered ${response.status}.`);
}

async function show() {
  const { name, params } = parseHash();
  for (const link of $("nav").querySelectorAll("a")) {
    link.toggleAttribute("aria-current", link.dataset.section === name);
    if (link.dataset.section === name) link.setAttribute("aria-current", "page");
  }
  if (unmount) unmount();
  unmount = null;
  const root = $("view");
  root.replaceChildren();
  root.dataset.section = name;
  const module = await import(`./views/${name}.js`);
  const ctx = {
    client,
    adminKey: sessionStorage.getItem(KEY_STORAGE),
    api,
    navigate: (section, extra) => {
      const query = new URLSearchParams(extra || {}).toString();
      location.hash = query ? `${section}?${query}` : section;
    },
  };
  unmount = module.mount(root, ctx, params) || null;
}

function open(key) {
  client = new convex.ConvexClient(location.origin, { unsavedChangesWarning: false });
  client.client.setAdminAuth(key);
  $("key-form").hidden = true;
  $("view").hidden = false;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("connection").dataset.state = "admin";
  $("connection").textContent = "Admin";
  window.addEventListener("hashchange", show);
  show();
}

function build() {
  for (const [name, label] of SECTIONS) {
    const link = document.createElement("a");
    link.href = `#${name}`;
    link.textContent = label;
    link.dataset.section = name;
    link.dataset.testid = `nav-${name}`;
    link.setAttribute("data-testid", `nav-${name}`);
    $("nav").append(link);
  }
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    $("key-error").hidden = true;
    try {
      await checkKey(key);
    } catch (error) {
      $("key-error").textContent = error.message;
      $("key-error").hidden = false;
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    open(key);
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    location.reload();
  });
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) open(key);
  else $("key-input").focus();
}

build();
