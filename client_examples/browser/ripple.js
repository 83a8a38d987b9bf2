/**
 * ripple.js: a small browser client for the Convex sync protocol, as a Ripple server speaks it.
 * One WebSocket carries subscriptions, mutations, actions and auth; the wire rules are in the project's
 * convex-protocol.md, and the comments here say why each matters to a client. No build step, no deps.
 * @example
 *   const client = new RippleClient(location.origin, { onConnectionChange: (state) => show(state) });
 *   const stop = client.subscribe("videos:listByStatus", {}, (jobs) => render(jobs), (error) => warn(error));
 *   await client.mutation("videos:completeJob", { twitchId, jobId }); // subscriptions already show it
 */
import { convexToJson, decodeTs, encodeTs, jsonToConvex } from "./codec.js";

export * from "./codec.js";

/** WebSocket.OPEN, spelled out so an injected WebSocket implementation needs no global. */
const OPEN = 1;
const INITIAL_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 16000;
/** Retry delay after a close we chose ourselves: the server is up, only our socket state is wrong. */
const SELF_CLOSE_BACKOFF_MS = 100;
/** The server pings after 15 s of silence, so 60 s without any message means the socket is dead. */
const INACTIVE_SERVER_MS = 60000;
/** A socket that stayed open this long was healthy; its failure restarts the backoff from the bottom. */
const HEALTHY_SOCKET_MS = 30000;

// ---- Helpers -----------------------------------------------------------------------------------

/** http(s)://host[/prefix] -> ws(s)://host[/prefix]/api/sync; a trailing "/" must not give "//api". */
function toSyncUrl(url) {
  const parsed = new URL(url, globalThis.location?.href);
  const scheme = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" }[parsed.protocol];
  if (!scheme) throw new TypeError(`RippleClient: expected an http(s) URL, got "${url}"`);
  return `${scheme}//${parsed.host}${`${parsed.pathname}/api/sync`.replace(/\/{2,}/g, "/")}`;
}

/** randomUUID exists only in secure contexts, and a dashboard opened over plain http on a LAN is not one. */
function newSessionId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  [b[6], b[8]] = [(b[6] & 0x0f) | 0x40, (b[8] & 0x3f) | 0x80];
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
}

/** Exponential backoff with "equal jitter", so clients cut off together do not all return together. */
function backoffMs(failures) {
  const ceiling = Math.min(MAX_BACKOFF_MS, INITIAL_BACKOFF_MS * 2 ** failures);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** An Error that carries ConvexError data when the server sent any (`errorData` present, even null). */
function serverError(prefix, message, source) {
  const error = new Error(`${prefix} ${message}`);
  if ("errorData" in source) error.data = jsonToConvex(source.errorData);
  return error;
}

/** A value we cannot decode fails only its own query, not the whole socket. */
function decodeValue(json) {
  try { return { value: jsonToConvex(json) }; } catch (error) { return { error }; }
}

/** A throwing callback is the caller's bug; it must not break the socket's message loop. */
function safeCall(fn, ...args) {
  try { fn?.(...args); } catch (error) { console.error("ripple: a callback threw", error); }
}

// ---- Client ------------------------------------------------------------------------------------

/**
 * A reactive connection to a Ripple (or Convex) deployment.
 * `onConnectionChange(state, detail)`: "connecting", "connected", "reconnecting" (detail: why),
 * "fatal" (detail: the server's message; the client has stopped) or "closed" (after close()).
 * `onAuthChange(state, detail)`: "none", "pending" (sent, unconfirmed), "confirmed" or "error"
 * (detail: the server's message; the token was dropped and is not retried).
 */
export class RippleClient {
  /**
   * @param {string} url the server's base URL, e.g. `location.origin` or "http://127.0.0.1:8000"
   * @param {{onConnectionChange?: Function, onAuthChange?: Function, WebSocket?: Function}} [options]
   */
  constructor(url, options = {}) {
    this.url = toSyncUrl(url);
    this.options = options;
    // One session id for the client's life: the server dedupes resent mutations by (sessionId, requestId).
    this.sessionId = newSessionId();
    /** queryId -> {udfPath, args, key, journal, result, subscribers}; ids are never reused or reset. */
    this.queries = new Map();
    this.queryIdsByKey = new Map();
    this.nextQueryId = 0;
    /** requestId -> pending mutation/action; a mutation stays until a Transition covers its commit ts. */
    this.requests = new Map();
    this.nextRequestId = 0;
    this.token = null;
    this.authState = "none";
    this.state = null;
    this.stopped = false;
    this.failures = 0;
    // Sent in Connect; maxObservedTs lets the server refuse to hand us a snapshot older than one we saw.
    [this.connectionCount, this.lastCloseReason, this.maxObservedTs] = [0, "InitialConnect", null];
    this._connect();
  }

  /** Subscribe to a query; identical subscriptions share one server query. Returns unsubscribe(). */
  subscribe(udfPath, args, onUpdate, onError) {
    const jsonArgs = [convexToJson(args ?? {})];
    const key = JSON.stringify([udfPath, jsonArgs]);
    let queryId = this.queryIdsByKey.get(key);
    let query = this.queries.get(queryId);
    if (!query) {
      queryId = this.nextQueryId++;
      query = { udfPath, args: jsonArgs, key, journal: null, result: null, subscribers: new Set() };
      this.queries.set(queryId, query);
      this.queryIdsByKey.set(key, queryId);
      this._modifyQuerySet([{ type: "Add", queryId, udfPath, args: jsonArgs }]);
    }
    const subscriber = { onUpdate, onError };
    query.subscribers.add(subscriber);
    // A late joiner of a shared query gets the current result now, not at the next change.
    if (query.result) queueMicrotask(() => query.subscribers.has(subscriber) && this._deliver(subscriber, query));
    return () => {
      if (!query.subscribers.delete(subscriber) || query.subscribers.size > 0) return;
      this.queries.delete(queryId);
      this.queryIdsByKey.delete(key);
      this._modifyQuerySet([{ type: "Remove", queryId }]);
    };
  }

  /** Run a mutation. Resolves once every subscription reflects it (read your writes); rejects on failure. */
  mutation(udfPath, args) {
    return this._request("Mutation", udfPath, args);
  }

  /** Run an action. Rejects if the socket drops while it runs, since it may or may not have happened. */
  action(udfPath, args) {
    return this._request("Action", udfPath, args);
  }

  /** Set (a JWT) or clear (null) the identity that this client's queries and mutations run as. */
  setAuth(token) {
    this.token = token || null;
    // Unsent auth goes out on open; "None" only matters if this socket has authenticated before. Send it
    // before telling the caller, so queries it subscribes in response already run as the new identity.
    if (this._isOpen() && (this.token || this.authCount > 0)) this._sendAuth();
    this._setAuthState(this.token ? "pending" : "none");
  }

  /** Stop for good: close the socket and reject whatever is pending. */
  close() {
    this._stop("closed", "RippleClient was closed");
  }

  // ---- Socket lifecycle ----

  _connect() {
    const ws = new (this.options.WebSocket ?? WebSocket)(this.url);
    this.ws = ws;
    // Versions belong to one socket: both sides start every connection from {0, 0, 0}.
    this.version = { querySet: 0, identity: 0, ts: 0n };
    [this.querySetVersion, this.authCount, this.openedAt] = [0, 0, null];
    ws.onopen = () => this._onOpen();
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onclose = (event) => this._reconnect(event.reason || `SocketClosed(${event.code})`);
    this._setState("connecting");
  }

  /** Replay everything the server must know, in the official client's order. */
  _onOpen() {
    this.openedAt = Date.now();
    const connect = { type: "Connect", sessionId: this.sessionId, connectionCount: this.connectionCount++,
      lastCloseReason: this.lastCloseReason, clientTs: Date.now() };
    if (this.maxObservedTs !== null) connect.maxObservedTimestamp = encodeTs(this.maxObservedTs);
    this._send(connect);
    if (this.token) this._sendAuth();
    this._modifyQuerySet([...this.queries].map(([queryId, q]) => ({ type: "Add", queryId, udfPath: q.udfPath,
      args: q.args, ...(q.journal !== null && { journal: q.journal }) })));
    // Answered-but-uncovered mutations go again too: the server dedupes them and answers again.
    for (const request of this.requests.values()) {
      [request.sent, request.ts] = [true, null];
      this._send(request.message);
    }
    this._armInactivityTimer();
    this._setState("connected");
  }

  _onMessage(data) {
    this._armInactivityTimer(); // any message, Ping included, proves the server is alive
    try {
      const message = JSON.parse(data);
      if (message.type === "Transition") this._onTransition(message);
      else if (message.type === "MutationResponse" || message.type === "ActionResponse") this._onResponse(message);
      else if (message.type === "AuthError") this._onAuthError(message);
      else if (message.type === "FatalError") this._onFatalError(message.error);
      else if (message.type !== "Ping") console.warn(`ripple: ignoring unknown message type ${message.type}`);
    } catch (error) {
      // A frame we cannot apply leaves our state unknown; a fresh socket rebuilds it.
      console.error("ripple: bad message from server, reconnecting", error);
      this._reconnect("BadServerMessage", SELF_CLOSE_BACKOFF_MS);
    }
  }

  _onTransition({ startVersion: start, endVersion: end, modifications }) {
    const [startTs, endTs, v] = [decodeTs(start.ts), decodeTs(end.ts), this.version];
    if (start.querySet !== v.querySet || start.identity !== v.identity || startTs !== v.ts) {
      // A gap means a change was missed or misapplied; staying would show stale data forever.
      console.warn("ripple: Transition does not start where the last one ended; reconnecting");
      this._reconnect("StartVersionMismatch", SELF_CLOSE_BACKOFF_MS);
      return;
    }
    this.version = { querySet: end.querySet, identity: end.identity, ts: endTs };
    if (this.maxObservedTs === null || endTs > this.maxObservedTs) this.maxObservedTs = endTs;
    const changed = [];
    for (const m of modifications) {
      const query = this.queries.get(m.queryId);
      if (!query || m.type === "QueryRemoved") continue; // already gone locally
      query.journal = m.journal ?? null;
      query.result = m.type === "QueryFailed"
        ? { error: serverError(`[RIPPLE Q(${query.udfPath})]`, m.errorMessage, m) }
        : decodeValue(m.value);
      changed.push(query);
    }
    if (end.identity > start.identity && end.identity >= this.authCount && this.token) {
      this._setAuthState("confirmed");
    }
    // Deliver the whole snapshot before resolving mutations, so their callers already see their writes.
    for (const query of changed) for (const s of [...query.subscribers]) this._deliver(s, query);
    for (const [requestId, request] of this.requests) {
      if (request.ts !== null && request.ts <= endTs) {
        this.requests.delete(requestId);
        request.resolve(request.result);
      }
    }
  }

  _onResponse(message) {
    const request = this.requests.get(message.requestId);
    if (!request) return; // a second answer to a request resent across a reconnect
    if (!message.success) {
      this.requests.delete(message.requestId);
      const kind = request.kind === "Mutation" ? "M" : "A";
      request.reject(serverError(`[RIPPLE ${kind}(${request.udfPath})]`, message.result, message));
    } else if (request.kind === "Action") {
      this.requests.delete(message.requestId);
      request.resolve(jsonToConvex(message.result));
    } else {
      // Only a Transition received after this response proves the subscriptions include the write.
      request.result = jsonToConvex(message.result);
      request.ts = decodeTs(message.ts);
    }
  }

  _onAuthError({ error, baseVersion }) {
    // An error about a token we have replaced since says nothing about the current one.
    if (baseVersion + 1 >= this.authCount) {
      this.token = null; // never resend a token the server refused
      this._setAuthState("error", error);
    }
    this.failures = 0; // the server answered sensibly, so it is healthy: come back at once
    this._reconnect("AuthError", SELF_CLOSE_BACKOFF_MS);
  }

  /** Drop the socket and schedule a new one; in-flight actions fail, everything else is replayed. */
  _reconnect(reason, selfCloseDelayMs) {
    const healthy = this.openedAt !== null && Date.now() - this.openedAt > HEALTHY_SOCKET_MS;
    if (!this._teardown(reason)) return;
    for (const [requestId, request] of this.requests) {
      if (request.kind !== "Action" || !request.sent) continue;
      this.requests.delete(requestId);
      request.reject(new Error(`[RIPPLE A(${request.udfPath})] Connection lost while action was in flight`));
    }
    if (healthy) this.failures = 0;
    // A self-inflicted close is retried fast once; if it repeats, it backs off like any failure.
    const delay = selfCloseDelayMs !== undefined && this.failures === 0 ? selfCloseDelayMs : backoffMs(this.failures);
    this.failures += 1;
    this._setState("reconnecting", reason);
    this.reconnectTimer = setTimeout(() => this._connect(), delay);
  }

  /** The server says retrying cannot help, so the client stops for good, as the official client does. */
  _onFatalError(error) {
    console.error(`ripple: fatal error from server: ${error}`);
    this._stop("fatal", `Fatal server error: ${error}`, error);
  }

  /** Stop for good (FatalError or close()): drop the socket, reject everything pending. */
  _stop(state, rejection, detail) {
    this.stopped = true;
    this._teardown(state);
    for (const request of this.requests.values()) request.reject(new Error(rejection));
    this.requests.clear();
    this._setState(state, detail);
  }

  /** Detach and close the socket so its late events cannot touch the next one. False if none. */
  _teardown(reason) {
    clearTimeout(this.inactivityTimer);
    clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    if (!ws) return false;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState <= OPEN) ws.close(1000); // CONNECTING or OPEN
    this.lastCloseReason = reason;
    return !this.stopped;
  }

  _armInactivityTimer() {
    clearTimeout(this.inactivityTimer);
    this.inactivityTimer = setTimeout(() => this._reconnect("InactiveServer", SELF_CLOSE_BACKOFF_MS),
      INACTIVE_SERVER_MS);
  }

  // ---- Sending ----

  _isOpen() {
    return this.ws?.readyState === OPEN && this.openedAt !== null;
  }

  _send(message) {
    this.ws.send(JSON.stringify(message));
  }

  /** While disconnected, changes stay local: the whole set goes out as 0 -> 1 on open. */
  _modifyQuerySet(modifications) {
    if (!this._isOpen()) return;
    const baseVersion = this.querySetVersion++;
    this._send({ type: "ModifyQuerySet", baseVersion, newVersion: baseVersion + 1, modifications });
  }

  /** baseVersion counts the Authenticate messages already sent on this socket, as the server does. */
  _sendAuth() {
    const base = { type: "Authenticate", baseVersion: this.authCount++ };
    this._send(this.token ? { ...base, tokenType: "User", value: this.token } : { ...base, tokenType: "None" });
    if (this.token) this._setAuthState("pending");
  }

  _request(kind, udfPath, args) {
    if (this.stopped) return Promise.reject(new Error(`RippleClient has stopped (${this.state})`));
    return new Promise((resolve, reject) => {
      const message = { type: kind, requestId: this.nextRequestId++, udfPath, args: [convexToJson(args ?? {})] };
      const request = { kind, udfPath, message, resolve, reject, sent: this._isOpen(), ts: null, result: undefined };
      this.requests.set(message.requestId, request);
      if (request.sent) this._send(message); // otherwise it goes out on open
    });
  }

  // ---- Callbacks ----

  _deliver(subscriber, query) {
    if ("error" in query.result) safeCall(subscriber.onError ?? console.error, query.result.error);
    else safeCall(subscriber.onUpdate, query.result.value);
  }

  _setState(state, detail) {
    if (state === this.state && state !== "reconnecting") return;
    this.state = state;
    safeCall(this.options.onConnectionChange, state, detail);
  }

  _setAuthState(state, detail) {
    if (state === this.authState && state !== "error") return;
    this.authState = state;
    safeCall(this.options.onAuthChange, state, detail);
  }
}
