// A React page on the official hooks: useQuery keeps a job list live, usePaginatedQuery pages through the signed-in
// user's workflows, useMutation creates one. Open it as index.html?url=<deployment>&token=<JWT, optional>.
// `api` comes from `ripple codegen` (../convex/_generated): `tsc --noEmit` checks every call's arguments and result.
import { Component, StrictMode, useState, type ReactNode } from "react";
import { createRoot } from "react-dom/client";
import { ConvexProvider, ConvexReactClient, useMutation, usePaginatedQuery, useQuery } from "convex/react";
import { api } from "../convex/_generated/api";

const params = new URLSearchParams(window.location.search);
const deploymentUrl = params.get("url") ?? "http://127.0.0.1:8000";
const token = params.get("token");
const client = new ConvexReactClient(deploymentUrl);
if (token) client.setAuth(async () => token);

function eta(seconds: number | null | undefined): string {
  if (seconds == null) return "";
  return seconds >= 60 ? `${Math.floor(seconds / 60)}m ${Math.round(seconds % 60)}s` : `${Math.round(seconds)}s`;
}

function Jobs() {
  const jobs = useQuery(api.videos.listByStatus, {}); // undefined until the first result arrives
  if (jobs === undefined) return <p className="muted">Loading jobs…</p>;
  if (jobs.length === 0) return <p className="muted">No video jobs yet.</p>;
  return (
    <table id="jobs">
      <thead>
        <tr><th>Video</th><th>Status</th><th>Stage</th><th>Progress</th><th>ETA</th></tr>
      </thead>
      <tbody>
        {jobs.map((job) => (
          <tr key={job._id} data-twitch-id={job.twitchId}>
            <td>{job.title}</td>
            <td className={job.status}>{job.status}</td>
            <td>{job.currentStage ?? ""}</td>
            <td>
              <progress max="100" value={job.progressPercentage ?? 0} />{" "}
              <span className="percent">{Math.round(job.progressPercentage ?? 0)}%</span>
            </td>
            <td>{job.status === "Completed" ? "" : eta(job.estimatedCompletionSeconds)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Workflows() {
  const [status, setStatus] = useState("pending");
  const { results, status: pages, loadMore } = usePaginatedQuery(
    api.workflows.listByStatus,
    { status },
    { initialNumItems: 2 },
  );
  const create = useMutation(api.workflows.createWorkflow);
  const [task, setTask] = useState("");
  return (
    <>
      <p>
        Status:{" "}
        <select value={status} onChange={(e) => setStatus(e.target.value)}>
          {["pending", "in_progress", "completed", "failed"].map((s) => <option key={s}>{s}</option>)}
        </select>{" "}
        <span className="muted" id="page-status">{pages}</span>
      </p>
      <ol id="workflows">
        {results.map((w) => <li key={w._id}>{w.task} <span className="muted">({w.currentStep})</span></li>)}
      </ol>
      <button id="load-more" onClick={() => loadMore(2)} disabled={pages !== "CanLoadMore"}>Load more</button>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (task.trim()) create({ task: task.trim() }).then(() => setTask(""));
        }}
      >
        <input id="task" value={task} onChange={(e) => setTask(e.target.value)} placeholder="New workflow task" />
        <button id="create">Create</button>
      </form>
    </>
  );
}

class ErrorBoundary extends Component<{ children: ReactNode }, { error: Error | null }> {
  state: { error: Error | null } = { error: null };
  static getDerivedStateFromError(error: Error) {
    return { error };
  }
  render() {
    return this.state.error ? <p className="error">{String(this.state.error.message)}</p> : this.props.children;
  }
}

function App() {
  return (
    <>
      <h1>Video jobs</h1>
      <ErrorBoundary><Jobs /></ErrorBoundary>
      <h2>My workflows</h2>
      {token ? (
        <ErrorBoundary><Workflows /></ErrorBoundary>
      ) : (
        <p className="muted">Add <code>&amp;token=&lt;JWT&gt;</code> (from <code>ripple token --sub you</code>) to see them.</p>
      )}
      <p className="muted">Deployment: {deploymentUrl}</p>
    </>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <ConvexProvider client={client}>
      <App />
    </ConvexProvider>
  </StrictMode>,
);
