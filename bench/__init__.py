"""`ripple bench` / `python -m bench`: Ripple measured against floors taken in the same run.

Modules:

* `__main__`  - the orchestrator: PostgreSQL, the Ripple server process, the phases, the table.
* `functions` - the bench's own query and mutation (loaded by the server through `RIPPLE_MODULES`).
* `clients`   - the load-generating process (`python -m bench.clients`): many WebSockets, LISTEN, raw writers.
* `procs`     - starting, watching and stopping those child processes (each dies with the bench).
* `rawws`     - the floor for fan-out and memory: a bare `websockets` broadcast server (`python -m bench.rawws`).
"""
