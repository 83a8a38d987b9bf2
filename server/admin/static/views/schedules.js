// Schedules: scheduled functions, live through `_system/platform:scheduled` (a pending job moves to success on
// screen as it runs), with Cancel for pending ones; and the cron jobs, declared in code (GET /api/admin/crons)
// with their last run live through `_system/platform:cronRuns`.
import { adminGet, confirmButton, describe, h, when } from "./_platform.js";

const STATES = ["pending", "inProgress", "success", "failed", "canceled"];
const PAGE = 25;

function every(ms) {
  for (const [unit, size] of [["h", 3600000], ["min", 60000], ["s", 1000]])
    if (ms >= size && ms % size === 0) return `every ${ms / size} ${unit}`;
  return `every ${ms} ms`;
}

export function mount(root, ctx) {
  const stops = [];
  const report = h("p", { class: "error", role: "alert", testid: "schedules-error" });

  // Scheduled functions: a page at a time, newest first; `cursors` remembers the pages before this one.
  const stateFilter = h(
    "select",
    { id: "job-state", testid: "job-state" },
    h("option", { value: "" }, "every state"),
    STATES.map((state) => h("option", { value: state }, state)),
  );
  const rows = h("tbody", { testid: "jobs" });
  const older = h("button", { type: "button", class: "secondary", testid: "jobs-older" }, "Older");
  const newest = h("button", { type: "button", class: "secondary", testid: "jobs-newest" }, "Newest");
  const pageNote = h("span", { class: "muted" });
  let cursors = [null];
  let unsubscribe = null;
  let next = null;

  function job(doc) {
    const state = doc.state.kind;
    const cells = [
      h("td", {}, h("code", {}, doc.name), h("div", { class: "muted mono" }, doc._id)),
      h("td", {}, h("span", { class: `badge state-${state}`, testid: `job-state-${doc._id}` }, state)),
      h("td", {}, when(doc.scheduledTime)),
      h("td", {}, when(doc.completedTime)),
      h("td", {}, h("code", { class: "args" }, JSON.stringify(doc.args[0] ?? {}))),
      h("td", { class: doc.state.error ? "error" : "" }, doc.state.error || ""),
      h(
        "td",
        {},
        state === "pending"
          ? confirmButton(
              "Cancel",
              "Confirm cancel",
              () => ctx.client.mutation("_system/platform:cancel", { id: doc._id }),
              report,
              { testid: `cancel-${doc._id}`, "aria-label": `Cancel ${doc.name} (${doc._id})` },
            )
          : "",
      ),
    ];
    return h("tr", { testid: `job-${doc._id}`, dataset: { state } }, cells);
  }

  function subscribe() {
    if (unsubscribe) unsubscribe();
    const args = { limit: PAGE, cursor: cursors[cursors.length - 1] };
    if (stateFilter.value) args.state = stateFilter.value;
    unsubscribe = ctx.client.onUpdate(
      "_system/platform:scheduled",
      args,
      (result) => {
        report.textContent = "";
        rows.replaceChildren(
          ...(result.page.length
            ? result.page.map(job)
            : [h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No scheduled functions here."))]),
        );
        next = result.isDone ? null : result.continueCursor;
        older.disabled = next === null;
        newest.disabled = cursors.length === 1;
        pageNote.textContent = `Page ${cursors.length}`;
      },
      (error) => {
        report.textContent = describe(error);
      },
    );
  }
  stateFilter.addEventListener("change", () => {
    cursors = [null];
    subscribe();
  });
  older.addEventListener("click", () => {
    if (next === null) return;
    cursors.push(next);
    subscribe();
  });
  newest.addEventListener("click", () => {
    cursors = [null];
    subscribe();
  });

  // Cron jobs: the declared ones from the process, their last runs live; fetched again once a next run passes.
  const cronRows = h("tbody", { testid: "crons" });
  const cronNote = h("p", { class: "muted", testid: "crons-note" });
  let declared = { enabled: true, jobs: [] };
  let runs = [];
  let refetch = null;

  function renderCrons() {
    const byName = new Map(runs.map((run) => [run.name, run]));
    cronNote.textContent = declared.enabled
      ? declared.jobs.length
        ? ""
        : "No cron jobs are declared (a project's crons.py declares them)."
      : "Cron jobs are turned off in this process (RIPPLE_CRONS_ENABLED).";
    cronRows.replaceChildren(
      ...declared.jobs.map((job) => {
        const last = byName.get(job.name)?.lastRun;
        const state = last ? last.state.kind : null;
        const schedule = job.schedule.kind === "cron" ? job.schedule.expression : every(job.schedule.everyMs);
        return h(
          "tr",
          { testid: `cron-${job.name}` },
          h("td", {}, job.name),
          h("td", {}, h("code", {}, job.function)),
          h("td", {}, h("code", {}, schedule)),
          h(
            "td",
            {},
            last
              ? [h("span", { class: `badge state-${state}`, testid: `cron-state-${job.name}` }, state), " ",
                 when(last.completedTime ?? last.scheduledTime)]
              : "not run yet",
            last && last.state.error ? h("div", { class: "error" }, last.state.error) : null,
          ),
          h("td", { testid: `cron-next-${job.name}` }, when(job.nextRun)),
        );
      }),
    );
  }

  async function loadCrons() {
    clearTimeout(refetch);
    try {
      declared = await adminGet(ctx, "/api/admin/crons");
    } catch (error) {
      cronNote.textContent = describe(error);
      return;
    }
    renderCrons();
    const soonest = Math.min(...declared.jobs.map((job) => job.nextRun));
    const wait = Number.isFinite(soonest) ? Math.max(1000, soonest - Date.now() + 250) : 60000;
    refetch = setTimeout(loadCrons, Math.min(wait, 60000));
  }

  const head = (...names) => h("thead", {}, h("tr", {}, names.map((name) => h("th", { scope: "col" }, name))));
  root.append(
    h("h2", {}, "Schedules"),
    report,
    h(
      "section",
      { "aria-labelledby": "jobs-title" },
      h("h3", { id: "jobs-title" }, "Scheduled functions"),
      h(
        "div",
        { class: "filters" },
        h("div", { class: "field" }, h("label", { for: "job-state" }, "State"), stateFilter),
        h("div", { class: "actions" }, newest, older, pageNote),
      ),
      h(
        "div",
        { class: "scroll" },
        h("table", { class: "stack" }, head("Function", "State", "Scheduled", "Completed", "Arguments", "Error", ""), rows),
      ),
    ),
    h(
      "section",
      { "aria-labelledby": "crons-title" },
      h("h3", { id: "crons-title" }, "Cron jobs"),
      cronNote,
      h(
        "div",
        { class: "scroll" },
        h("table", { class: "stack" }, head("Name", "Function", "Schedule", "Last run", "Next run"), cronRows),
      ),
    ),
  );

  subscribe();
  stops.push(
    ctx.client.onUpdate(
      "_system/platform:cronRuns",
      {},
      (result) => {
        runs = result;
        renderCrons();
      },
      (error) => {
        cronNote.textContent = describe(error);
      },
    ),
  );
  loadCrons();
  return () => {
    if (unsubscribe) unsubscribe();
    for (const stop of stops) stop();
    clearTimeout(refetch);
  };
}
