#!/usr/bin/env bash
# Start the web server and a Celery worker (with beat) in the foreground; Ctrl-C stops both.
# Embedded default: with neither DATABASE_URL nor REDIS_URL set, SQLite and kombu's
# filesystem broker under var/. Set both to run against PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT="${PORT:-8000}"
HOST="${HOST:-127.0.0.1}"
VAR="${VAR_DIR:-$PWD/var}"
mkdir -p "$VAR"

# No secret given: generate one into $VAR/secret_key, once. It is not exported: settings
# read that file whenever neither SECRET_KEY nor SECRET_KEY_FILE is set, so the processes
# below and a management command typed in another shell find the same key the same way.
# Written to a private temporary file and renamed, so no reader ever sees it half-written.
if [ -z "${SECRET_KEY:-}" ] && [ -z "${SECRET_KEY_FILE:-}" ] && [ ! -s "$VAR/secret_key" ]; then
  tmp=$(mktemp "$VAR/.secret_key.XXXXXX")
  "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(50))' > "$tmp"
  mv -f "$tmp" "$VAR/secret_key"
fi

"$BIN/python" manage.py migrate --noinput -v0
"$BIN/python" manage.py seed_demo

pids=()
stop() {
  trap - INT TERM EXIT
  echo "Stopping web server and worker..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

"$BIN/celery" -A console worker --beat --loglevel=INFO --concurrency="${WORKER_CONCURRENCY:-2}" \
  --schedule="$VAR/celerybeat-schedule" --hostname="worker-$$@%h" &
pids+=($!)
"$BIN/gunicorn" console.wsgi:application --bind "$HOST:$PORT" --workers "${WEB_WORKERS:-2}" \
  --threads 4 --access-logfile - &
pids+=($!)

echo
echo "Console: http://$HOST:$PORT/   API docs: http://$HOST:$PORT/api/v1/docs"
echo "Press Ctrl-C to stop."
# Exit (and stop the other) as soon as either process ends.
wait -n "${pids[@]}"
