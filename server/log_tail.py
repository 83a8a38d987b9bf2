"""`ripple logs`: follow a server's function log (`GET /api/logs`, admin key) in a terminal or a pipe."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["format_record", "tail"]


def format_record(record: dict[str, Any]) -> str:
    """One readable line per record (the JSON itself with `--json`)."""
    ts = str(record.get("ts", ""))[11:23]
    kind = record.get("type")
    if kind == "call":
        return (
            f"{ts} {record['level'].upper():5} {record['function']} {record['kind']} via {record['transport']}: "
            f"{record['outcome']} in {record['duration_ms']:.1f} ms (request {record['request_id']}, "
            f"caller {record['caller']})"
        )
    if kind == "line":
        return f"{ts} {record['level'].upper():5} {record['function']} [{record['request_id']}] {record['message']}"
    if kind == "dropped":
        return f"(this reader was too slow: {record['count']} records were dropped)"
    return json.dumps(record)


def tail(
    url: str,
    admin_key: str | None,
    *,
    function: str | None = None,
    level: str | None = None,
    request_id: str | None = None,
    as_json: bool = False,
    count: int | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Print records as they come, until interrupted (or `count` records). 1 with a message when refused."""
    if not admin_key:
        print("ripple logs: the log stream needs the admin key: --admin-key or RIPPLE_ADMIN_KEY", file=sys.stderr)
        return 2
    params = {k: v for k, v in (("function", function), ("level", level), ("request", request_id)) if v}
    headers = {"Authorization": f"Convex {admin_key}"}
    seen = 0
    try:
        with httpx.stream(
            "GET", f"{url.rstrip('/')}/api/logs", params=params, headers=headers, timeout=httpx.Timeout(10, read=None)
        ) as response:
            if response.status_code != 200:
                response.read()
                print(f"ripple logs: HTTP {response.status_code}: {response.text[:500]}", file=sys.stderr)
                return 1
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                record = json.loads(line[6:])
                out(line[6:] if as_json else format_record(record))
                seen += 1
                if count is not None and seen >= count:
                    return 0
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        print(f"ripple logs: cannot follow {url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
