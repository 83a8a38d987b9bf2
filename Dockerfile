# Ripple: one process serving the HTTP API, the sync WebSocket and the hub.
#
#   docker build -t ripple .
#   docker run -p 8000:8000 -e RIPPLE_JWT_SECRET=... -e RIPPLE_ADMIN_KEY=... -v ripple-data:/data ripple
#
# With DATABASE_URL set it uses that PostgreSQL (see compose.yaml); without it, it starts the embedded
# PostgreSQL 16 that pgserver ships, as this non-root user, with its data in the /data volume.
#
# It serves the seed project (schema.sql and functions/, installed as data files under share/ripple). To serve
# your own project instead, copy its folder in and point RIPPLE_PROJECT at it (or give it to `ripple serve`):
#
#   FROM ripple
#   COPY --chown=10001:10001 . /project
#   ENV RIPPLE_PROJECT=/project
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RIPPLE_DATA_DIR=/data \
    RIPPLE_PORT=8000 \
    XDG_RUNTIME_DIR=/tmp

WORKDIR /app
COPY pyproject.toml README.md schema.sql ./
COPY server ./server
COPY functions ./functions
COPY client_examples/browser ./client_examples/browser
RUN pip install --no-cache-dir . \
    && groupadd --gid 10001 ripple \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin ripple \
    && mkdir /data \
    && chown 10001:10001 /data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RIPPLE_PORT', '8000') + '/health', timeout=4)"]
# SIGINT, not SIGTERM: uvicorn re-raises the signal it caught after its graceful shutdown, and only SIGINT (as
# KeyboardInterrupt) lets `ripple serve` then stop the embedded PostgreSQL cleanly instead of dying mid-way.
STOPSIGNAL SIGINT
CMD ["ripple", "serve", "--host", "0.0.0.0"]
