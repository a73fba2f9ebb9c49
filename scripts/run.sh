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

if [ -z "${SECRET_KEY:-}" ] && [ -z "${SECRET_KEY_FILE:-}" ]; then
  if [ ! -s "$VAR/secret_key" ]; then
    (umask 077; "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(50))' > "$VAR/secret_key")
  fi
  export SECRET_KEY_FILE="$VAR/secret_key"
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
