// Small helpers the Data and Functions sections share: building elements, and how values and errors read.

// `el("button", {type: "button", "data-testid": "x"}, "Save")`; an attribute whose value is null is left out.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// A value as one line: strings as they are, everything else as JSON (bigints as `123n`).
export function formatValue(value) {
  if (typeof value === "string") return value;
  if (typeof value === "bigint") return `${value}n`;
  if (value instanceof ArrayBuffer) return `<${value.byteLength} bytes>`;
  return JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `${v}n` : v));
}

// An error as the user should read it: its message, the request id to find it in the logs, and its data.
export function errorText(err) {
  let text = err?.message || String(err);
  if (err?.requestId && !text.includes(err.requestId)) text += ` (request ${err.requestId})`;
  if (err?.data !== undefined) text += ` — data: ${formatValue(err.data)}`;
  return text;
}
