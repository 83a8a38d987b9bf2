"""A video-processing worker, as an external service would write one with the official Python client.

It holds the deployment's admin key (`set_admin_auth`), queues a video with `videos:create`, then reports each
stage through `videos:updateJobProgress` and finishes with `videos:completeJob` (or `videos:updateJobError` with
--fail). Every report is an ordinary mutation: anyone subscribed to the job (job_monitor.py, `ripple watch`, the
React page) sees it at once. The real work is simulated by sleeping --delay seconds per stage.

    python client_examples/python/worker.py --url http://127.0.0.1:8000 --admin-key "$RIPPLE_ADMIN_KEY" --twitch-id demo
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from convex import ConvexClient, ConvexError

# The processing stages of a job, in order, with the progress reported when each one starts.
STAGES = [
    ("Downloading", 0),
    ("Fetching chat", 20),
    ("Transcribing", 40),
    ("Analyzing", 60),
    ("Finding highlights", 80),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the deployment URL")
    parser.add_argument("--admin-key", required=True, help="the server's RIPPLE_ADMIN_KEY")
    parser.add_argument("--twitch-id", required=True, help="the video to process")
    parser.add_argument("--title", help="its title (default: 'Twitch VOD <twitch-id>')")
    parser.add_argument("--job-id", help="the id reports carry (default: '<twitch-id>-job')")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds each simulated stage takes")
    parser.add_argument("--fail", action="store_true", help="fail during transcription instead of completing")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    job_id = args.job_id or f"{args.twitch_id}-job"
    # The client's calls block inside Rust but still run Python signal handlers, so an alarm bounds the run.
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"worker: gave up after {args.timeout:g}s"))
    signal.setitimer(signal.ITIMER_REAL, args.timeout)

    client = ConvexClient(args.url)
    client.set_admin_auth(args.admin_key)
    try:
        video_id = client.mutation(
            "videos:create", {"twitchId": args.twitch_id, "title": args.title or f"Twitch VOD {args.twitch_id}"}
        )
        print(f"queued video {args.twitch_id} ({video_id}), job {job_id}", flush=True)
    except ConvexError as exc:
        if not (isinstance(exc.data, dict) and exc.data.get("code") == "ALREADY_EXISTS"):
            raise
        existing = client.query("videos:getByTwitchId", {"twitchId": args.twitch_id})
        if existing["status"] == "Completed":
            print(f"video {args.twitch_id} is already Completed; choose another --twitch-id", file=sys.stderr)
            return 1
        print(f"video {args.twitch_id} already exists ({existing['status']}); reporting on it as job {job_id}")

    def report(**fields: Any) -> None:
        client.mutation("videos:updateJobProgress", {"twitchId": args.twitch_id, "jobId": job_id, **fields})

    for i, (stage, percent) in enumerate(STAGES):
        eta = (len(STAGES) - i) * args.delay
        report(status=stage, currentStage=stage, progressPercentage=percent, estimatedCompletionSeconds=eta)
        print(f"{percent:3d}%  {stage}", flush=True)
        time.sleep(args.delay / 2)
        report(progressPercentage=percent + 10, estimatedCompletionSeconds=eta - args.delay / 2)
        print(f"{percent + 10:3d}%  {stage}", flush=True)
        if args.fail and stage == "Transcribing":
            client.mutation(
                "videos:updateJobError",
                {
                    "twitchId": args.twitch_id,
                    "jobId": job_id,
                    "errorType": "external_service_error",
                    "errorMessage": "the transcription service timed out",
                    "isRetryable": True,
                },
            )
            print("failed: the transcription service timed out", flush=True)
            return 1
        time.sleep(args.delay / 2)
    urls: dict[str, Any] = {"transcriptUrl": f"https://example.invalid/{args.twitch_id}/transcript.json"}
    client.mutation("videos:completeJob", {"twitchId": args.twitch_id, "jobId": job_id, "urls": urls})
    print("100%  Completed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
