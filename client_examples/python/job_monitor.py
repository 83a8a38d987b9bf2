"""Follow one video job live with the official Python client, until it completes or fails.

`subscribe` yields the query's result again each time a mutation changes it: no polling. The job may not exist
yet (the worker creates it), so a missing job (`null`) just means "waiting". Exits 0 on Completed, 1 on Failed,
2 on --timeout.

    python client_examples/python/job_monitor.py --url http://127.0.0.1:8000 --job-id demo-job
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any, cast

from convex import ConvexClient


def describe(job: dict[str, Any] | None) -> str:
    if job is None:
        return "waiting for the job to start"
    line = f"{job['status']:<18} {job.get('progressPercentage', 0):5.1f}%"
    if job.get("currentStage"):
        line += f"  stage={job['currentStage']}"
    if job.get("estimatedCompletionSeconds") is not None and job["status"] != "Completed":
        line += f"  eta={job['estimatedCompletionSeconds']:.0f}s"
    if job.get("errorMessage"):
        line += f"  error={job.get('errorType')}: {job['errorMessage']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the deployment URL")
    parser.add_argument("--job-id", required=True, help="the jobId the worker reports with")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args(argv)

    # Iterating a subscription blocks inside Rust but still runs Python signal handlers, so an alarm bounds it.
    def give_up(*_: object) -> None:
        print(f"job_monitor: no end of job {args.job_id} after {args.timeout:g}s", file=sys.stderr)
        sys.exit(2)

    signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)

    client = ConvexClient(args.url)
    last = None
    for result in client.subscribe("videos:getJobById", {"jobId": args.job_id}):
        job = cast("dict[str, Any] | None", result)  # a video document, or null while the job has not started
        line = describe(job)
        if line != last:  # the client may yield an unchanged result again; print changes only
            print(f"{time.strftime('%H:%M:%S')}  {args.job_id}  {line}", flush=True)
            last = line
        if job is not None and job["status"] in ("Completed", "Failed"):
            return 0 if job["status"] == "Completed" else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
