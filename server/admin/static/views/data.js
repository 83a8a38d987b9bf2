// The Data section: tables with live row counts, a live page of the chosen table's documents (by any index,
// filtered by a field, paginated the Convex way), and edit / insert / delete through `_system/data:*` mutations,
// so every change commits through the normal path and reaches every subscriber.
//
// Reads are subscriptions (`ctx.client.onUpdate`); writes go through `ctx.api` (HTTP), whose errors carry the
// request id to quote when looking in the logs.

import { el, errorText, formatValue } from "./util.js";

const PAGE_SIZES = [10, 25, 50, 100];
const ID_SHAPE = /^[0-9a-f]{36}$/;

export function mount(root, ctx, params) {
  const state = {
    tables: [],
    table: params.get("table") || null,
    focusId: params.get("id") || null,
    index: "by_creation_time",
    order: "desc",
    filterField: "",
    filterValue: "",
    pageSize: 25,
    cursors: [null], // the cursor of each page reached; the last is the current page's
    editing: null, // {mode: "patch"|"insert", id?}
  };
  const stops = [];
  let stopPage = null;
  let stopFocus = null;
  const files = new Map(); // storage id → promise of {url, contentType} | null

  const tableList = el("ul", { class: "table-list", "data-testid": "table-list" });
  const heading = el("h2", { id: "data-heading" }, "Choose a table");
  const indexSelect = el("select", { id: "data-index", "data-testid": "data-index" });
  const orderSelect = el(
    "select",
    { id: "data-order", "data-testid": "data-order" },
    el("option", { value: "desc" }, "Descending"),
    el("option", { value: "asc" }, "Ascending"),
  );
  const fieldSelect = el("select", { id: "data-filter-field", "data-testid": "data-filter-field" });
  const valueInput = el("input", {
    id: "data-filter-value",
    "data-testid": "data-filter-value",
    placeholder: 'a string, or JSON: 3, true, null, "3"',
    autocomplete: "off",
  });
  const sizeSelect = el(
    "select",
    { id: "data-page-size", "data-testid": "data-page-size" },
    ...PAGE_SIZES.map((n) => el("option", { value: String(n), selected: n === 25 ? "" : null }, String(n))),
  );
  const controls = el(
    "form",
    { class: "controls", "data-testid": "data-controls" },
    el("div", {}, el("label", { for: "data-index" }, "Sort by index"), indexSelect),
    el("div", {}, el("label", { for: "data-order" }, "Order"), orderSelect),
    el("div", {}, el("label", { for: "data-filter-field" }, "Filter field"), fieldSelect),
    el("div", {}, el("label", { for: "data-filter-value" }, "equals"), valueInput),
    el("div", {}, el("label", { for: "data-page-size" }, "Per page"), sizeSelect),
    el("button", { type: "submit", "data-testid": "data-apply" }, "Apply"),
  );
  const previous = el("button", { type: "button", class: "secondary", "data-testid": "data-previous" }, "Previous");
  const next = el("button", { type: "button", class: "secondary", "data-testid": "data-next" }, "Next");
  const insertButton = el("button", { type: "button", "data-testid": "data-insert" }, "Insert document");
  const pageInfo = el("span", { class: "muted", "data-testid": "data-page-info", role: "status" });
  const error = el("p", { class: "error", role: "alert", "data-testid": "data-error", hidden: "" });
  const focus = el("div", { class: "focus", "data-testid": "data-focus", hidden: "" });
  const docs = el("div", { class: "scroll", "data-testid": "documents" });
  const editorText = el("textarea", { id: "data-editor-text", rows: "10", spellcheck: "false", "data-testid": "data-editor-text" });
  const editorLabel = el("label", { for: "data-editor-text" }, "Document (JSON)");
  const editorError = el("p", { class: "error", role: "alert", "data-testid": "data-editor-error", hidden: "" });
  const editor = el(
    "form",
    { class: "editor", "data-testid": "data-editor", hidden: "" },
    editorLabel,
    editorText,
    editorError,
    el(
      "div",
      { class: "row" },
      el("button", { type: "submit", "data-testid": "data-editor-save" }, "Save"),
      el("button", { type: "button", class: "secondary", "data-testid": "data-editor-cancel" }, "Cancel"),
    ),
  );

  root.append(
    el(
      "div",
      { class: "data-layout" },
      el("nav", { "aria-label": "Tables", class: "tables" }, el("h2", {}, "Tables"), tableList),
      el(
        "div",
        { class: "data-main" },
        heading,
        controls,
        el("div", { class: "row" }, insertButton, previous, next, pageInfo),
        error,
        editor,
        focus,
        docs,
      ),
    ),
  );

  const tableInfo = () => state.tables.find((t) => t.name === state.table);
  const byNumber = () => new Map(state.tables.map((t) => [t.number, t.name]));

  function showError(where, err) {
    error.textContent = `${where}: ${errorText(err)}`;
    error.hidden = false;
  }

  // Tables, live: counts move as documents come and go.
  stops.push(
    ctx.client.onUpdate(
      "_system/data:tables",
      {},
      (tables) => {
        state.tables = tables;
        renderTables();
        if (!state.table && tables.length) choose(tables.find((t) => !t.system)?.name || tables[0].name, false);
        else if (state.table && indexSelect.options.length === 0) choose(state.table, false);
      },
      (err) => showError("Listing tables failed", err),
    ),
  );

  function renderTables() {
    tableList.replaceChildren(
      ...state.tables.map((t) => {
        const count = t.countCapped ? `${t.count}+` : String(t.count);
        const button = el(
          "button",
          {
            type: "button",
            class: "table-button",
            "data-testid": `table-${t.name}`,
            "aria-current": t.name === state.table ? "true" : null,
          },
          el("span", {}, t.name),
          el("span", { class: "count", "data-testid": `count-${t.name}` }, count),
        );
        button.addEventListener("click", () => ctx.navigate("data", { table: t.name }));
        return el("li", {}, button);
      }),
    );
  }

  function choose(name, resetFilters = true) {
    state.table = name;
    const info = tableInfo();
    if (!info) return;
    heading.textContent = info.system ? `${name} (system table, read only)` : name;
    insertButton.hidden = info.system;
    if (resetFilters) Object.assign(state, { index: "by_creation_time", filterField: "", filterValue: "" });
    indexSelect.replaceChildren(
      ...info.indexes.map((i) => el("option", { value: i.name }, `${i.name} (${i.fields.join(", ")})`)),
    );
    indexSelect.value = state.index;
    fieldSelect.replaceChildren(el("option", { value: "" }, "(no filter)"), ...info.fields.map((f) => el("option", { value: f }, f)));
    fieldSelect.value = state.filterField;
    renderTables();
    restart();
  }

  function parseFilterValue(text) {
    // JSON when it parses (3, true, null, "quoted"), else the text itself: most filters are on strings.
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }

  function restart() {
    state.cursors = [null];
    subscribePage();
  }

  function pageArgs() {
    const args = {
      table: state.table,
      index: state.index,
      order: state.order,
      paginationOpts: { numItems: state.pageSize, cursor: state.cursors[state.cursors.length - 1] },
    };
    if (state.filterField) {
      args.filterField = state.filterField;
      args.filterValue = parseFilterValue(state.filterValue);
    }
    return args;
  }

  function subscribePage() {
    if (stopPage) stopPage();
    error.hidden = true;
    const number = state.cursors.length;
    stopPage = ctx.client.onUpdate(
      "_system/data:documents",
      pageArgs(),
      (page) => {
        renderDocuments(page.page);
        next.disabled = page.isDone;
        next.onclick = () => {
          state.cursors.push(page.continueCursor);
          subscribePage();
        };
        previous.disabled = number === 1;
        pageInfo.textContent = `Page ${number}: ${page.page.length} document${page.page.length === 1 ? "" : "s"}`;
      },
      (err) => showError("Reading documents failed", err),
    );
  }

  previous.addEventListener("click", () => {
    if (state.cursors.length > 1) state.cursors.pop();
    subscribePage();
  });

  controls.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(state, {
      index: indexSelect.value,
      order: orderSelect.value,
      filterField: fieldSelect.value,
      filterValue: valueInput.value,
      pageSize: Number(sizeSelect.value),
    });
    restart();
  });

  function renderCell(column, value) {
    // A creation time reads as a time; the number it is stays in the tooltip (and in edits and filters).
    if (column === "_creationTime" && typeof value === "number") {
      return el("time", { datetime: new Date(value).toISOString(), title: String(value), class: "mono" }, new Date(value).toISOString().replace("T", " ").slice(0, 23));
    }
    return renderValue(value);
  }

  function renderValue(value) {
    if (typeof value === "string" && ID_SHAPE.test(value)) {
      const table = byNumber().get(parseInt(value.slice(28, 32), 16));
      if (table === "_storage") return storagePreview(value);
      if (table) {
        const link = el("a", { href: `#data?table=${encodeURIComponent(table)}&id=${value}`, class: "mono", title: `${table} document` }, value);
        return link;
      }
    }
    return el("span", { class: "mono" }, formatValue(value));
  }

  function storagePreview(storageId) {
    const holder = el("span", { class: "file", "data-testid": `file-${storageId}` }, el("span", { class: "mono" }, storageId));
    if (!files.has(storageId)) files.set(storageId, ctx.client.query("_system/data:file", { storageId }).catch(() => null));
    files.get(storageId).then((file) => {
      if (!file || !file.url) {
        holder.append(el("span", { class: "muted" }, " (no such file)"));
        return;
      }
      const link = el("a", { href: file.url, target: "_blank", rel: "noopener" }, "");
      if ((file.contentType || "").startsWith("image/")) {
        link.append(el("img", { src: file.url, alt: `stored image ${storageId}`, class: "preview" }));
      } else {
        link.textContent = `open file (${file.contentType || "unknown type"}, ${file.size} bytes)`;
      }
      holder.replaceChildren(link);
    });
    return holder;
  }

  function renderDocuments(list) {
    const info = tableInfo();
    const columns = ["_id", "_creationTime"];
    for (const doc of list) for (const key of Object.keys(doc)) if (!columns.includes(key)) columns.push(key);
    const head = el("tr", {}, ...columns.map((c) => el("th", { scope: "col" }, c)), el("th", { scope: "col" }, "Actions"));
    const rows = list.map((doc) => {
      const actions = el("td", { class: "actions" });
      if (!info?.system) {
        const edit = el("button", { type: "button", class: "secondary", "data-testid": `edit-${doc._id}` }, "Edit");
        edit.addEventListener("click", () => openEditor("patch", doc));
        const remove = el("button", { type: "button", class: "danger", "data-testid": `delete-${doc._id}` }, "Delete");
        remove.addEventListener("click", () => removeDocument(doc._id));
        actions.append(edit, remove);
      }
      return el(
        "tr",
        { "data-testid": `doc-${doc._id}`, class: doc._id === state.focusId ? "focused" : null },
        ...columns.map((c) => el("td", {}, c in doc ? renderCell(c, doc[c]) : el("span", { class: "muted" }, "—"))),
        actions,
      );
    });
    const table = el("table", { "aria-labelledby": "data-heading" }, el("thead", {}, head), el("tbody", {}, ...rows));
    docs.replaceChildren(list.length ? table : el("p", { class: "muted" }, "No documents."));
  }

  function editableFields(doc) {
    const copy = { ...doc };
    delete copy._id;
    delete copy._creationTime;
    return copy;
  }

  function openEditor(mode, doc) {
    state.editing = { mode, id: doc?._id };
    editorLabel.textContent = mode === "insert" ? `New document in ${state.table} (JSON)` : `Fields to set on ${doc._id} (JSON; null removes a field)`;
    editorText.value = JSON.stringify(mode === "insert" ? {} : editableFields(doc), null, 2);
    editorError.hidden = true;
    editor.hidden = false;
    editorText.focus();
  }

  function validate(text) {
    // Checked here before sending: JSON, an object, no system fields, only known fields.
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new Error(`Not valid JSON: ${err.message}`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("The document must be a JSON object.");
    const fields = new Set(tableInfo()?.fields || []);
    for (const key of Object.keys(value)) {
      if (key.startsWith("_")) throw new Error(`System field "${key}" cannot be written.`);
      if (fields.size && !fields.has(key)) throw new Error(`Unknown field "${key}"; the fields are: ${[...fields].filter((f) => !f.startsWith("_")).join(", ")}`);
    }
    return value;
  }

  editor.addEventListener("submit", async (event) => {
    event.preventDefault();
    editorError.hidden = true;
    let value;
    try {
      value = validate(editorText.value);
    } catch (err) {
      editorError.textContent = err.message;
      editorError.hidden = false;
      return;
    }
    const { mode, id } = state.editing;
    try {
      if (mode === "insert") await ctx.api("/api/mutation", { path: "_system/data:insert", args: { table: state.table, document: value } });
      else await ctx.api("/api/mutation", { path: "_system/data:patch", args: { id, fields: value } });
      editor.hidden = true;
      state.editing = null;
    } catch (err) {
      editorError.textContent = errorText(err);
      editorError.hidden = false;
    }
  });
  editor.querySelector("[data-testid=data-editor-cancel]").addEventListener("click", () => {
    editor.hidden = true;
    state.editing = null;
  });
  insertButton.addEventListener("click", () => openEditor("insert"));

  async function removeDocument(id) {
    if (!window.confirm(`Delete document ${id} from ${state.table}? This cannot be undone.`)) return;
    try {
      await ctx.api("/api/mutation", { path: "_system/data:delete", args: { id } });
    } catch (err) {
      showError(`Deleting ${id} failed`, err);
    }
  }

  // A linked document (`#data?table=t&id=...`), live, above the page.
  if (state.focusId) {
    stopFocus = ctx.client.onUpdate(
      "_system/data:document",
      { id: state.focusId },
      (doc) => {
        focus.hidden = false;
        focus.replaceChildren(
          el("h3", {}, `Document ${state.focusId}`),
          doc === null ? el("p", { class: "muted" }, "This document does not exist (it may have been deleted).") : el("pre", { "data-testid": "focus-json" }, JSON.stringify(doc, null, 2)),
        );
      },
      (err) => showError("Reading the linked document failed", err),
    );
  }

  return () => {
    for (const stop of stops) stop();
    if (stopPage) stopPage();
    if (stopFocus) stopFocus();
  };
}
