// Helpers shared by the Logs, Schedules, Files and Health sections (not a section itself).

// An element: h("button", { type: "button", onclick }, "Text", child). Attributes starting with "on" are
// listeners; `dataset` and `testid` set data attributes; false or null attributes are left out.
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "testid") node.setAttribute("data-testid", value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Epoch ms as local date and time, to the second; "—" for none.
export function when(ms) {
  if (ms === null || ms === undefined) return "—";
  const date = new Date(ms);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function bytes(size) {
  if (size < 1024) return `${size} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = size;
  let unit = -1;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

// A button that asks before it acts: the first press turns it into "Confirm <label>" for five seconds, the second
// runs `act` (a promise); a failure is shown in `report` (an element), with the request id when there is one.
export function confirmButton(label, confirmLabel, act, report, attrs) {
  const button = h("button", { type: "button", class: "danger", ...attrs }, label);
  let armed = null;
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = confirmLabel;
      armed = setTimeout(() => {
        armed = null;
        button.textContent = label;
      }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.disabled = true;
    try {
      await act();
    } catch (error) {
      button.disabled = false;
      button.textContent = label;
      if (report) report.textContent = describe(error);
    }
  });
  return button;
}

// An error from the client or the HTTP API, as a sentence with its request id when the server gave one.
export function describe(error) {
  const message = (error && error.message) || String(error);
  return error && error.requestId ? `${message} (request ${error.requestId})` : message;
}

// GET an admin-only JSON endpoint of this server.
export async function adminGet(ctx, path) {
  const response = await fetch(path, { headers: { Authorization: `Convex ${ctx.adminKey}` }, cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `The server answered ${response.status} for ${path}.`);
  return body;
}
