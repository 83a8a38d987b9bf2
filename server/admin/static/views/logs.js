// Logs: the live function log from GET /api/logs (server/log_stream.py), filtered by function, level, request id
// and user. The stream is Server-Sent Events that need the admin key in a header, so it is read with fetch and a
// stream reader (EventSource cannot send headers). Filters apply in the page to the records kept, so changing one
// shows its matches at once; a line learns its caller from its call's record (which follows the lines).
import { h } from "./_platform.js";

const KEEP = 1000; // records kept; the oldest go first
const RANK = { debug: 0, info: 1, log: 1, warn: 2, warning: 2, error: 3 };
const RETRY_MS = 2000;

export function mount(root, ctx) {
  const records = [];
  const callers = new Map(); // request id → caller, from call records
  let paused = false;
  let unseen = 0;
  let dropped = 0;
  let abort = null;
  let stopped = false;
  let frame = 0;

  const field = (id, label, input) =>
    h("div", { class: "field" }, h("label", { for: id }, label), input);
  const fn = h("input", { id: "log-function", testid: "log-function", type: "search", placeholder: "module:function" });
  const level = h(
    "select",
    { id: "log-level", testid: "log-level" },
    ["debug", "info", "warn", "error"].map((name) => h("option", { value: name }, `${name} and above`)),
  );
  const request = h("input", { id: "log-request", testid: "log-request", type: "search", placeholder: "request id" });
  const user = h("input", { id: "log-user", testid: "log-user", type: "search", placeholder: "subject, admin…" });
  const reruns = h("input", { id: "log-reruns", testid: "log-reruns", type: "checkbox" });
  const pause = h("button", { type: "button", class: "secondary", testid: "log-pause", "aria-pressed": "false" }, "Pause");
  const clear = h("button", { type: "button", class: "secondary", testid: "log-clear" }, "Clear");
  const status = h("p", { class: "muted", testid: "log-status", role: "status" }, "Connecting…");
  const list = h("ol", { class: "log-list", testid: "log-list", "aria-label": "Log records, newest first" });

  root.append(
    h("h2", {}, "Logs"),
    h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter the log", onsubmit: (e) => e.preventDefault() },
      field("log-function", "Function", fn),
      field("log-level", "Level", level),
      field("log-request", "Request id", request),
      field("log-user", "User", user),
      h("div", { class: "field check" }, reruns, h("label", { for: "log-reruns" }, "Subscription re-runs")),
      h("div", { class: "actions" }, pause, clear),
    ),
    status,
    list,
  );
  for (const input of [fn, request, user]) input.addEventListener("input", schedule);
  for (const input of [level, reruns]) input.addEventListener("change", schedule);
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) unseen = 0;
    schedule();
  });
  clear.addEventListener("click", () => {
    records.length = 0;
    unseen = 0;
    schedule();
  });

  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }

  function matches(record) {
    const needle = (input) => input.value.trim().toLowerCase();
    const caller = record.caller || callers.get(record.request_id) || "";
    if (record.type === "call" && record.transport === "hub" && record.outcome === "ok" && !reruns.checked)
      return false;
    return (
      (RANK[record.level] ?? 1) >= RANK[level.value] &&
      (!needle(fn) || (record.function || "").toLowerCase().includes(needle(fn))) &&
      (!needle(request) || (record.request_id || "").toLowerCase().includes(needle(request))) &&
      (!needle(user) || caller.toLowerCase().includes(needle(user)))
    );
  }

  function row(record) {
    const caller = record.caller || callers.get(record.request_id);
    const item = h("li", {
      class: `log-row level-${record.level}`,
      testid: "log-row",
      dataset: { level: record.level, function: record.function || "", request: record.request_id || "" },
    });
    const filterBy = (input, value) =>
      h("button", {
        type: "button",
        class: "link",
        title: `Show only ${value}`,
        onclick: () => {
          input.value = value;
          schedule();
        },
      }, value);
    item.append(
      h(
        "div",
        { class: "log-meta" },
        h("time", { datetime: record.ts }, record.ts ? record.ts.slice(11, 23) : ""),
        h("span", { class: "badge" }, record.level),
        record.function ? filterBy(fn, record.function) : null,
        record.request_id ? filterBy(request, record.request_id) : null,
        caller ? h("span", { class: "muted" }, caller) : null,
      ),
    );
    if (record.type === "line") item.append(h("pre", { class: "log-message" }, record.message));
    else {
      const ms = record.duration_ms !== undefined ? ` in ${record.duration_ms} ms` : "";
      item.append(
        h("p", { class: "log-message" }, `${record.kind} via ${record.transport}: ${record.outcome}${ms}`),
      );
      if (record.error) item.append(h("p", { class: "error log-message", testid: "log-error" }, record.error));
      if (record.traceback)
        item.append(
          h("details", { testid: "log-traceback" }, h("summary", {}, "Traceback"), h("pre", {}, record.traceback)),
        );
    }
    return item;
  }

  function render() {
    frame = 0;
    const shown = records.filter(matches);
    let text = paused ? `Paused: ${unseen} new records not shown. ` : "Live. ";
    text += `${shown.length} of ${records.length} kept records match (the newest ${KEEP} are kept).`;
    if (dropped) text += ` The server dropped ${dropped} records this page could not take in time.`;
    status.textContent = text;
    if (paused) return;
    list.replaceChildren(...shown.slice(-300).reverse().map(row));
  }

  function add(record) {
    if (record.type === "dropped") {
      dropped += record.count;
      return;
    }
    if (record.type === "call" && record.request_id) callers.set(record.request_id, record.caller);
    if (callers.size > KEEP * 2) callers.delete(callers.keys().next().value);
    records.push(record);
    if (records.length > KEEP) records.splice(0, records.length - KEEP);
    if (paused) unseen += 1;
    schedule();
  }

  async function follow() {
    while (!stopped) {
      abort = new AbortController();
      try {
        const response = await fetch("/api/logs?level=debug", {
          headers: { Authorization: `Convex ${ctx.adminKey}` },
          signal: abort.signal,
        });
        if (!response.ok) throw new Error(`the log stream answered ${response.status}`);
        status.textContent = "Live.";
        schedule();
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = event
              .split("\n")
              .filter((line) => line.startsWith("data: "))
              .map((line) => line.slice(6))
              .join("\n");
            if (data) add(JSON.parse(data));
          }
        }
        throw new Error("the log stream ended");
      } catch (error) {
        if (stopped) return;
        status.textContent = `Disconnected (${error.message}); reconnecting in ${RETRY_MS / 1000} s…`;
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
  }

  follow();
  return () => {
    stopped = true;
    if (abort) abort.abort();
    if (frame) cancelAnimationFrame(frame);
  };
}
