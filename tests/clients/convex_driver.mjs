#!/usr/bin/env node
// Drives the OFFICIAL npm `convex` ConvexClient (convex/browser) from a
// JSON-lines script, so pytest can run it against a Ripple server.
//
// Usage: node convex_driver.mjs <deploymentUrl> [<clientOptionsJson>]
//
// stdin:  one JSON command per line   stdout: one JSON event per line
// stderr: free-form logs (everything the client logs goes there too).
//
// Values in commands and events use Convex's JSON encoding (the same as the
// wire protocol): int64 is {"$integer": b64}, bytes {"$bytes": b64},
// NaN/Inf/-0 {"$float": b64}. Plain JSON numbers are float64.
//
// Commands (every one may carry "id"; it is echoed in the events it causes):
//   {"op":"subscribe","id":"s1","fn":"mod:fn","args":{...}}
//       -> {"event":"update","id":"s1","value":v}            on every update
//       -> {"event":"error","id":"s1","message":m,"data":d?,"convexError":bool}
//   {"op":"unsubscribe","id":"s1"}                    -> {"event":"ack","op":"unsubscribe","id":"s1"}
//   {"op":"mutation","id":"m1","fn":..,"args":..}     -> {"event":"result","op":"mutation","id":"m1","value":v,
//                                                          "subs":{..},"subErrors":{..},"current":{..},"pages":{..}}
//                                                      or {"event":"error","op":"mutation","id":"m1",...}
//   {"op":"action",...}                               -> same as mutation with "op":"action"
//   {"op":"query",...}                                -> {"event":"result","op":"query","id":..,"value":v} (one-shot)
//   {"op":"setAuth","token":"jwt"|null}               -> {"event":"auth","isAuthenticated":bool} on each onChange
//                                                      and {"event":"authFetch","forceRefreshToken":bool} per fetch
//   {"op":"clearAuth"}                                -> {"event":"ack","op":"clearAuth"}
//   {"op":"paginate","id":"p1","fn":..,"args":{..},"numItems":N}
//       -> {"event":"pages","id":"p1","items":[..],"status":"LoadingFirstPage"|"CanLoadMore"|"LoadingMore"|"Exhausted"}
//   {"op":"loadMore","id":"p1","numItems":N}          -> {"event":"ack","op":"loadMore","id":"p1","started":bool}
//   {"op":"connectionState","id":..}                  -> {"event":"connectionState","id":..,"value":{...}}
//   {"op":"watchConnection"}                          -> {"event":"connectionState","value":{...}} on each change
//   {"op":"close"}  (or EOF on stdin)                 -> {"event":"closed","close":"ok"|"timeout"|"error: .."}, exit 0
// Other events: {"event":"ready"} at start; {"event":"log","level":..,"message":..} for every console line;
//   {"event":"uncaught","message":..} for an uncaught exception or rejection (the driver keeps running, like a
//   browser would); {"event":"driverError","id":..,"message":..} for a malformed command.
//
// "subs" in a mutation/action result is, for each active subscription, the latest value its onUpdate callback
// had received at the moment the promise resolved (missing if none yet); "current" is the client's local cached
// value (getCurrentValue()) at that moment; "pages" is the same for paginated queries (items only).

import { format } from "node:util";
import readline from "node:readline";
import { ConvexClient } from "convex/browser";
import { anyApi, makeFunctionReference } from "convex/server";
import { convexToJson, jsonToConvex } from "convex/values";

// ---------------------------------------------------------------- output
// Protocol lines go straight to fd 1; console.* is redirected to stderr so a
// client log line can never corrupt the event stream.
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const realError = console.error.bind(console);
for (const level of ["log", "info", "debug", "warn", "error", "trace"]) {
  console[level] = (...args) => {
    const message = format(...args);
    realError(message);
    try {
      emit({ event: "log", level, message });
    } catch {
      // stdout is gone; nothing to do.
    }
  };
}

function toJson(value) {
  if (value === undefined) return null;
  try {
    return convexToJson(value);
  } catch (e) {
    return { $unencodable: String(value), error: String(e) };
  }
}

function errorEvent(base, err) {
  const ev = { ...base, event: "error", message: err?.message ?? String(err) };
  // ConvexError from the client carries .data (undefined for plain errors).
  if (err && typeof err === "object" && "data" in err && err.data !== undefined) {
    ev.convexError = true;
    ev.data = toJson(err.data);
  } else {
    ev.convexError = false;
  }
  return ev;
}

// "dir/mod:fn" -> anyApi.dir.mod.fn (what generated `api` objects are);
// anything else (no colon, ".js" suffix, ...) goes through unchanged so tests
// can exercise the server's path canonicalization.
function fnRef(name) {
  if (typeof name !== "string" || name.length === 0) throw new Error(`bad fn: ${JSON.stringify(name)}`);
  const colon = name.lastIndexOf(":");
  if (colon > 0 && colon < name.length - 1 && !name.slice(0, colon).endsWith(".js")) {
    let ref = anyApi;
    for (const part of name.slice(0, colon).split("/")) ref = ref[part];
    return ref[name.slice(colon + 1)];
  }
  return makeFunctionReference(name);
}

function decodeArgs(args) {
  return args === undefined || args === null ? {} : jsonToConvex(args);
}

// ---------------------------------------------------------------- client
const url = process.argv[2];
if (!url) {
  realError("usage: node convex_driver.mjs <deploymentUrl> [optionsJson]");
  process.exit(2);
}
const options = { unsavedChangesWarning: false, ...(process.argv[3] ? JSON.parse(process.argv[3]) : {}) };

process.on("uncaughtException", (e) => emit({ event: "uncaught", message: e?.stack ?? String(e) }));
process.on("unhandledRejection", (e) => emit({ event: "uncaught", message: e?.stack ?? String(e) }));

const client = new ConvexClient(url, options);

const subs = new Map(); // id -> {unsubscribe, last, hasLast, lastError}
const pages = new Map(); // id -> {unsubscribe, lastItems}

function snapshot() {
  const seen = {};
  const errors = {};
  const current = {};
  for (const [id, s] of subs) {
    if (s.hasLast) seen[id] = toJson(s.last);
    if (s.lastError !== undefined) errors[id] = s.lastError;
    try {
      const v = s.handle.getCurrentValue();
      if (v !== undefined) current[id] = toJson(v);
    } catch (e) {
      // getCurrentValue throws for a failed query.
    }
  }
  const pg = {};
  for (const [id, p] of pages) if (p.lastItems !== undefined) pg[id] = p.lastItems;
  return { subs: seen, subErrors: errors, current, pages: pg };
}

const handlers = {
  subscribe(cmd) {
    if (subs.has(cmd.id)) throw new Error(`subscription id in use: ${cmd.id}`);
    const entry = { hasLast: false, last: undefined, lastError: undefined, handle: null };
    subs.set(cmd.id, entry);
    entry.handle = client.onUpdate(
      fnRef(cmd.fn),
      decodeArgs(cmd.args),
      (value) => {
        entry.hasLast = true;
        entry.last = value;
        entry.lastError = undefined;
        emit({ event: "update", id: cmd.id, value: toJson(value) });
      },
      (err) => {
        entry.lastError = err?.message ?? String(err);
        emit(errorEvent({ id: cmd.id, op: "subscribe" }, err));
      },
    );
  },

  unsubscribe(cmd) {
    const s = subs.get(cmd.id);
    const p = pages.get(cmd.id);
    if (!s && !p) throw new Error(`no subscription ${cmd.id}`);
    if (s) {
      s.handle.unsubscribe();
      subs.delete(cmd.id);
    }
    if (p) {
      p.handle.unsubscribe();
      pages.delete(cmd.id);
    }
    emit({ event: "ack", op: "unsubscribe", id: cmd.id });
  },

  mutation(cmd) {
    return callFn(cmd, (ref, args) => client.mutation(ref, args));
  },

  action(cmd) {
    return callFn(cmd, (ref, args) => client.action(ref, args));
  },

  query(cmd) {
    const base = { id: cmd.id, op: "query" };
    client.query(fnRef(cmd.fn), decodeArgs(cmd.args)).then(
      (value) => emit({ ...base, event: "result", value: toJson(value) }),
      (err) => emit(errorEvent(base, err)),
    );
  },

  setAuth(cmd) {
    const token = cmd.token ?? null;
    client.setAuth(
      async ({ forceRefreshToken } = {}) => {
        emit({ event: "authFetch", id: cmd.id, forceRefreshToken: !!forceRefreshToken });
        return token;
      },
      (isAuthenticated) => emit({ event: "auth", id: cmd.id, isAuthenticated }),
    );
  },

  clearAuth(cmd) {
    client.client.clearAuth();
    emit({ event: "ack", op: "clearAuth", id: cmd.id });
  },

  paginate(cmd) {
    if (pages.has(cmd.id)) throw new Error(`paginated query id in use: ${cmd.id}`);
    const numItems = cmd.numItems ?? cmd.initialNumItems;
    if (typeof numItems !== "number") throw new Error("paginate needs numItems");
    const entry = { handle: null, lastItems: undefined };
    pages.set(cmd.id, entry);
    // The official paginated-query support of ConvexClient (the same
    // PaginatedQueryClient that usePaginatedQuery's machinery builds on):
    // one subscription per page, continueCursor chaining, page splitting.
    entry.handle = client.onPaginatedUpdate_experimental(
      fnRef(cmd.fn),
      decodeArgs(cmd.args),
      { initialNumItems: numItems },
      (result) => {
        entry.lastItems = (result?.results ?? []).map(toJson);
        emit({ event: "pages", id: cmd.id, items: entry.lastItems, status: result?.status ?? null });
      },
      (err) => emit(errorEvent({ id: cmd.id, op: "paginate" }, err)),
    );
  },

  loadMore(cmd) {
    const p = pages.get(cmd.id);
    if (!p) throw new Error(`no paginated query ${cmd.id}`);
    const current = p.handle.getCurrentValue();
    const started = current ? current.loadMore(cmd.numItems) : false;
    emit({ event: "ack", op: "loadMore", id: cmd.id, started });
  },

  connectionState(cmd) {
    emit({ event: "connectionState", id: cmd.id, value: client.connectionState() });
  },

  watchConnection(cmd) {
    client.subscribeToConnectionState((state) => emit({ event: "connectionState", id: cmd.id, value: state }));
    emit({ event: "ack", op: "watchConnection", id: cmd.id });
  },

  async close() {
    await shutdown();
  },
};

function callFn(cmd, call) {
  const base = { id: cmd.id, op: cmd.op };
  let promise;
  try {
    promise = call(fnRef(cmd.fn), decodeArgs(cmd.args));
  } catch (err) {
    emit(errorEvent(base, err));
    return;
  }
  promise.then(
    // Taken synchronously in the resolution callback: this is what a caller
    // awaiting the promise would observe first.
    (value) => emit({ ...base, event: "result", value: toJson(value), ...snapshot() }),
    (err) => emit({ ...errorEvent(base, err), ...snapshot() }),
  );
}

let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  // client.close() can stay pending (e.g. once the client has wedged on a bad
  // Transition), and a pending promise alone does not keep Node alive: bound it.
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(() => resolve("timeout"), 3000);
  });
  let how = "ok";
  try {
    how = (await Promise.race([client.close().then(() => "ok"), timedOut])) ?? "ok";
  } catch (e) {
    how = `error: ${e?.message ?? e}`;
  }
  clearTimeout(timer);
  emit({ event: "closed", close: how });
  process.exit(0);
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit({ event: "driverError", message: `bad JSON: ${e.message}`, line });
    return;
  }
  const handler = Object.hasOwn(handlers, cmd.op) ? handlers[cmd.op] : undefined;
  if (!handler) {
    emit({ event: "driverError", id: cmd.id, message: `unknown op ${JSON.stringify(cmd.op)}` });
    return;
  }
  try {
    const r = handler(cmd);
    if (r && typeof r.catch === "function") {
      r.catch((e) => emit({ event: "driverError", id: cmd.id, op: cmd.op, message: e?.stack ?? String(e) }));
    }
  } catch (e) {
    emit({ event: "driverError", id: cmd.id, op: cmd.op, message: e?.stack ?? String(e) });
  }
});
rl.on("close", () => void shutdown());

emit({ event: "ready", url });
