// The Functions section: every registered function with its kind, visibility and argument schema; run any of
// them (internal ones too) as admin or acting as a user identity, with arguments checked against the schema
// before sending; a query can instead be followed live.
//
// Acting as a user is Convex's `setAdminAuth(key, actingAs)`: over HTTP `Authorization: Convex <key>:<base64 of
// the identity JSON>` (as ConvexHttpClient sends it), live through a second ConvexClient with that admin auth.

import { el, errorText, formatValue } from "./util.js";

export function mount(root, ctx, params) {
  let functions = [];
  let selected = null;
  let live = null; // {client, stop} while a query is followed

  const search = el("input", { id: "fn-search", type: "search", autocomplete: "off", "data-testid": "fn-search" });
  const list = el("ul", { class: "fn-list", "data-testid": "fn-list" });
  const details = el("div", { class: "fn-details", "data-testid": "fn-details" }, el("p", { class: "muted" }, "Choose a function."));
  root.append(
    el(
      "div",
      { class: "data-layout" },
      el(
        "nav",
        { "aria-label": "Functions", class: "tables" },
        el("h2", {}, "Functions"),
        el("label", { for: "fn-search" }, "Search"),
        search,
        list,
      ),
      el("div", { class: "data-main" }, details),
    ),
  );

  // The functions are code, not data: listed by the server from the registry serving now (GET /api/admin/functions).
  let stopped = false;
  const stopList = () => {
    stopped = true;
  };
  fetch("/api/admin/functions", { headers: { Authorization: `Convex ${ctx.adminKey}` }, cache: "no-store" })
    .then(async (response) => {
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.message || `The server answered ${response.status}.`);
      if (stopped) return;
      functions = body.functions;
      renderList();
      const wanted = params.get("path");
      if (!selected && wanted) choose(functions.find((f) => f.path === wanted));
    })
    .catch((err) => details.replaceChildren(el("p", { class: "error", role: "alert" }, `Listing functions failed: ${errorText(err)}`)));
  search.addEventListener("input", renderList);

  function renderList() {
    const term = search.value.trim().toLowerCase();
    list.replaceChildren(
      ...functions
        .filter((f) => !term || f.path.toLowerCase().includes(term))
        .map((f) => {
          const button = el(
            "button",
            { type: "button", class: "table-button", "data-testid": `fn-${f.path}`, "aria-current": f === selected ? "true" : null },
            el("span", { class: "mono" }, f.path),
            el("span", { class: `badge ${f.kind}` }, f.visibility === "internal" ? `${f.kind}, internal` : f.kind),
          );
          button.addEventListener("click", () => choose(f));
          return el("li", {}, button);
        }),
    );
  }

  function choose(fn) {
    if (!fn) return;
    stopLive();
    selected = fn;
    renderList();
    const schema = fn.argsSchema;
    const template = {};
    for (const name of schema.required || []) template[name] = exampleOf(resolve(schema, schema.properties?.[name] || {}));
    const argsText = el("textarea", { id: "fn-args", rows: "8", spellcheck: "false", "data-testid": "fn-args" });
    argsText.value = JSON.stringify(template, null, 2);
    const asAdmin = el("input", { type: "radio", name: "fn-as", id: "fn-as-admin", value: "admin", checked: "", "data-testid": "fn-as-admin" });
    const asUser = el("input", { type: "radio", name: "fn-as", id: "fn-as-user", value: "user", "data-testid": "fn-as-user" });
    const subject = el("input", { id: "fn-subject", autocomplete: "off", "data-testid": "fn-subject" });
    const name = el("input", { id: "fn-name", autocomplete: "off", "data-testid": "fn-name" });
    const email = el("input", { id: "fn-email", type: "email", autocomplete: "off", "data-testid": "fn-email" });
    const identityFields = el(
      "fieldset",
      { class: "identity", "data-testid": "fn-identity", disabled: "" },
      el("legend", {}, "User identity"),
      el("div", {}, el("label", { for: "fn-subject" }, "Subject (required)"), subject),
      el("div", {}, el("label", { for: "fn-name" }, "Name"), name),
      el("div", {}, el("label", { for: "fn-email" }, "Email"), email),
    );
    for (const radio of [asAdmin, asUser]) radio.addEventListener("change", () => (identityFields.disabled = !asUser.checked));
    const follow = fn.kind === "query" ? el("input", { type: "checkbox", id: "fn-follow", "data-testid": "fn-follow" }) : null;
    const outcome = el("div", { class: "outcome", "data-testid": "fn-outcome", "aria-live": "polite" });
    const form = el(
      "form",
      { class: "run-form", "data-testid": "fn-run-form" },
      el(
        "fieldset",
        { class: "run-as" },
        el("legend", {}, "Run as"),
        el("div", { class: "row" }, asAdmin, el("label", { for: "fn-as-admin" }, "Admin"), asUser, el("label", { for: "fn-as-user" }, "A user")),
      ),
      identityFields,
      el("label", { for: "fn-args" }, "Arguments (JSON)"),
      argsText,
      follow ? el("div", { class: "row" }, follow, el("label", { for: "fn-follow" }, "Follow live (subscribe instead of running once)")) : null,
      el("div", { class: "row" }, el("button", { type: "submit", "data-testid": "fn-run" }, fn.kind === "query" ? "Run query" : `Run ${fn.kind}`)),
    );
    details.replaceChildren(
      el("h2", { class: "mono", "data-testid": "fn-title" }, fn.path),
      el("p", {}, `${fn.kind}, ${fn.visibility}`),
      el("details", {}, el("summary", {}, "Argument schema"), el("pre", { "data-testid": "fn-schema" }, JSON.stringify(schema, null, 2))),
      form,
      outcome,
    );

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      stopLive();
      let args;
      let identity = null;
      try {
        args = parseArgs(argsText.value, schema);
        if (asUser.checked) identity = identityOf(subject.value, name.value, email.value);
      } catch (err) {
        showError(outcome, err);
        return;
      }
      if (follow?.checked) {
        followLive(fn, args, identity, outcome);
        return;
      }
      outcome.replaceChildren(el("p", { class: "muted" }, "Running…"));
      try {
        const value = await run(fn, args, identity);
        outcome.replaceChildren(el("h3", {}, "Result"), el("pre", { "data-testid": "fn-result" }, pretty(value)));
      } catch (err) {
        showError(outcome, err);
      }
    });
  }

  function showError(outcome, err) {
    outcome.replaceChildren(el("p", { class: "error", role: "alert", "data-testid": "fn-error" }, errorText(err)));
  }

  function identityOf(subject, name, email) {
    if (!subject.trim()) throw new Error("Give the user's subject (the `sub` of their tokens) to run as a user.");
    const identity = { subject: subject.trim() };
    if (name.trim()) identity.name = name.trim();
    if (email.trim()) identity.email = email.trim();
    return identity;
  }

  async function run(fn, args, identity) {
    let credential = ctx.adminKey;
    if (identity) {
      const bytes = new TextEncoder().encode(JSON.stringify(identity));
      credential += `:${btoa(String.fromCodePoint(...bytes))}`;
    }
    const response = await fetch(`/api/${fn.kind}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Convex ${credential}` },
      body: JSON.stringify({ path: fn.path, args, format: "json" }),
    });
    const reply = await response.json().catch(() => ({}));
    if (!response.ok || reply.status !== "success") {
      const err = new Error(reply.errorMessage || reply.message || `HTTP ${response.status}`);
      err.requestId = response.headers.get("x-request-id");
      err.data = reply.errorData;
      throw err;
    }
    return reply.value;
  }

  function followLive(fn, args, identity, outcome) {
    // A client of its own: its admin auth may act as a user without changing the console's.
    const client = identity ? new convex.ConvexClient(location.origin, { unsavedChangesWarning: false }) : ctx.client;
    if (identity) client.client.setAdminAuth(ctx.adminKey, identity);
    const result = el("pre", { "data-testid": "fn-result" }, "Waiting for the first result…");
    const updated = el("p", { class: "muted", "data-testid": "fn-updated" });
    outcome.replaceChildren(el("h3", {}, "Live result"), updated, result);
    let updates = 0;
    const stop = client.onUpdate(
      fn.path,
      args,
      (value) => {
        updates += 1;
        updated.textContent = `Updated ${new Date().toLocaleTimeString()} (${updates} result${updates === 1 ? "" : "s"})`;
        result.textContent = pretty(value);
      },
      (err) => showError(outcome, err),
    );
    live = { client: identity ? client : null, stop };
  }

  function stopLive() {
    if (!live) return;
    live.stop();
    if (live.client) live.client.close();
    live = null;
  }

  return () => {
    stopList();
    stopLive();
  };
}

function pretty(value) {
  return value === undefined ? "null" : JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `${v}n` : v), 2);
}

function parseArgs(text, schema) {
  let args;
  try {
    args = JSON.parse(text || "{}");
  } catch (err) {
    throw new Error(`The arguments are not valid JSON: ${err.message}`);
  }
  const problems = [];
  check(schema, schema, args, "arguments", problems);
  if (problems.length) throw new Error(`The arguments do not match the schema: ${problems.join("; ")}`);
  return args;
}

function resolve(root, node) {
  if (node && node.$ref) {
    const name = node.$ref.split("/").pop();
    return root.$defs?.[name] || {};
  }
  return node || {};
}

const TYPES = {
  string: (v) => typeof v === "string",
  number: (v) => typeof v === "number",
  integer: (v) => Number.isInteger(v),
  boolean: (v) => typeof v === "boolean",
  null: (v) => v === null,
  array: (v) => Array.isArray(v),
  object: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
};

// The part of JSON Schema pydantic emits for function arguments: type, anyOf, enum/const, properties, required,
// additionalProperties, items, $ref. Anything else is left to the server, which validates again.
function check(root, node, value, where, problems) {
  node = resolve(root, node);
  if (node.anyOf || node.oneOf) {
    const options = node.anyOf || node.oneOf;
    if (!options.some((option) => { const p = []; check(root, option, value, where, p); return p.length === 0; })) {
      problems.push(`${where} matches none of the allowed types (${options.map((o) => resolve(root, o).type || resolve(root, o).title || "value").join(", ")})`);
    }
    return;
  }
  if (node.const !== undefined && value !== node.const) problems.push(`${where} must be ${formatValue(node.const)}`);
  if (node.enum && !node.enum.includes(value)) problems.push(`${where} must be one of ${node.enum.map(formatValue).join(", ")}`);
  const types = node.type ? [].concat(node.type) : [];
  if (types.length && !types.some((t) => TYPES[t]?.(value))) {
    problems.push(`${where} must be ${types.join(" or ")}, got ${value === null ? "null" : Array.isArray(value) ? "array" : typeof value}`);
    return;
  }
  if (TYPES.object(value) && (node.properties || node.required)) {
    for (const name of node.required || []) if (!(name in value)) problems.push(`missing required argument "${name}"`);
    for (const [name, item] of Object.entries(value)) {
      const spec = node.properties?.[name];
      if (spec) check(root, spec, item, name, problems);
      else if (node.additionalProperties === false) problems.push(`unexpected argument "${name}"`);
    }
  }
  if (Array.isArray(value) && node.items) value.forEach((item, i) => check(root, node.items, item, `${where}[${i}]`, problems));
}

function exampleOf(node) {
  const type = [].concat(node.type || (node.anyOf ? node.anyOf[0]?.type : "string"))[0];
  return { string: "", number: 0, integer: 0, boolean: false, array: [], object: {}, null: null }[type] ?? null;
}
