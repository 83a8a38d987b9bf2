// Health: sockets, subscriptions, query instances, hub lag, and rounds and re-runs per second, from the figures
// /metrics has. They live in the server process and change without any commit, so no subscription carries them:
// the view polls GET /api/admin/health every 2 s, and computes each rate from the difference of two polls'
// counters over the server's monotonic clock (so a late poll widens the window instead of skewing the rate).
import { adminGet, describe, h } from "./_platform.js";

const POLL_MS = 2000;

export function mount(root, ctx) {
  const report = h("p", { class: "error", role: "alert", testid: "health-error" });
  const updated = h("p", { class: "muted", testid: "health-updated" }, "Loading…");
  const values = {};
  const figure = (key, label, hint) => {
    values[key] = h("dd", { testid: `health-${key}` }, "—");
    return h("div", { class: "figure" }, h("dt", { title: hint }, label), values[key]);
  };
  root.append(
    h("h2", {}, "Health"),
    report,
    h(
      "dl",
      { class: "figures" },
      figure("sockets", "Sockets", "Open sync WebSocket connections"),
      figure("subscriptions", "Subscriptions", "Subscribed queries across all sockets"),
      figure("instances", "Query instances", "Distinct shared query instances"),
      figure("lag", "Hub lag", "Age of the oldest commit the hub has not processed"),
      figure("database", "Database", "Whether the database answers the hub's check"),
      figure("rounds", "Rounds / s", "Hub rounds that processed a commit or delivered something"),
      figure("reruns", "Re-runs / s", "Query instance runs by the hub (first results and re-runs)"),
      figure("calls", "Function calls / s", "Function calls, every transport"),
    ),
    updated,
  );

  let previous = null;
  let timer = null;
  let stopped = false;
  const rate = (now, key) =>
    previous ? ((now[key] - previous[key]) / Math.max(now.monotonicS - previous.monotonicS, 0.001)).toFixed(1) : "—";

  async function poll() {
    try {
      const now = await adminGet(ctx, "/api/admin/health");
      if (stopped) return;
      report.textContent = "";
      values.sockets.textContent = now.sockets;
      values.subscriptions.textContent = now.subscriptions;
      values.instances.textContent = now.queryInstances;
      values.lag.textContent = `${now.hubLagSeconds.toFixed(2)} s (${now.hubLagCommits} commits)`;
      values.database.textContent = now.databaseUp === null ? "not checked yet" : now.databaseUp ? "up" : "down";
      values.rounds.textContent = rate(now, "rounds");
      values.reruns.textContent = rate(now, "reruns");
      values.calls.textContent = rate(now, "functionCalls");
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}; processed ts ${now.processedTs}; server ${now.version}.`;
      previous = now;
    } catch (error) {
      if (!stopped) report.textContent = describe(error);
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
