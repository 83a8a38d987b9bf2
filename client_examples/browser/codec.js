/**
 * codec.js: Convex values and timestamps <-> their JSON wire form (pure; no I/O). Used by ripple.js.
 * int64 is JS BigInt; bytes are ArrayBuffer; NaN, ±Infinity and -0 round-trip through $float.
 */

const bytesToBase64 = (bytes) => btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
const base64ToBytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));

/** Int64, float64 and timestamps all travel as 8 little-endian bytes in base64. */
function eightBytes(b64, what) {
  const bytes = base64ToBytes(b64);
  if (bytes.length !== 8) throw new Error(`${what}: expected 8 base64-encoded bytes, got ${bytes.length}`);
  return new DataView(bytes.buffer);
}

function packEight(write) {
  const view = new DataView(new ArrayBuffer(8));
  write(view);
  return bytesToBase64(new Uint8Array(view.buffer));
}

/** Timestamps are u64 nanoseconds: as BigInt they compare exactly, which Numbers past 2^53 cannot. */
export const decodeTs = (b64) => eightBytes(b64, "timestamp").getBigUint64(0, true);
export const encodeTs = (ts) => packEight((view) => view.setBigUint64(0, ts, true));

/**
 * JS value -> Convex JSON. BigInt becomes int64; numbers JSON cannot hold (NaN, ±Infinity, -0) go as
 * $float so they survive the trip; fields set to undefined are dropped, as Convex does.
 */
export function convexToJson(value) {
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (typeof value === "bigint") {
    if (value < -(2n ** 63n) || value >= 2n ** 63n) throw new RangeError(`${value} does not fit in an int64`);
    return { $integer: packEight((view) => view.setBigInt64(0, value, true)) };
  }
  if (typeof value === "number") {
    if (Number.isFinite(value) && !Object.is(value, -0)) return value;
    return { $float: packEight((view) => view.setFloat64(0, value, true)) };
  }
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    return { $bytes: bytesToBase64(new Uint8Array(value.buffer ?? value, value.byteOffset ?? 0, value.byteLength)) };
  }
  if (Array.isArray(value)) return value.map(convexToJson);
  if (typeof value === "object") {
    const out = {};
    for (const [key, field] of Object.entries(value)) if (field !== undefined) out[key] = convexToJson(field);
    return out;
  }
  throw new TypeError(`cannot send a ${typeof value} to the server; it is not a Convex value`);
}

/** Convex JSON -> JS value. Only an object with exactly one $-key is special, so user data stays as is. */
export function jsonToConvex(json) {
  if (json === null || typeof json !== "object") return json;
  if (Array.isArray(json)) return json.map(jsonToConvex);
  const keys = Object.keys(json);
  const only = keys.length === 1 ? keys[0] : null;
  if (only === "$integer") return eightBytes(json.$integer, "$integer").getBigInt64(0, true);
  if (only === "$bytes") return base64ToBytes(json.$bytes).buffer;
  if (only === "$float") {
    const f = eightBytes(json.$float, "$float").getFloat64(0, true);
    if (Number.isFinite(f) && !Object.is(f, -0)) throw new Error(`$float holds an ordinary number (${f})`);
    return f;
  }
  return Object.fromEntries(keys.map((key) => [key, jsonToConvex(json[key])]));
}
