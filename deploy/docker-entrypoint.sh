#!/bin/sh
# Container entry point. `serve` (the default) migrates the database under a lock shared by every
# replica (the first migrates, the others find it at head), then runs the server with WORKERS workers.
# Anything else is a chatstudio command (`backup`, `restore FILE --yes`, `check`, `create-admin` ...).
set -eu

if [ "${1:-serve}" = "serve" ]; then
    [ "$#" -gt 0 ] && shift
    if [ "${MIGRATE_ON_START:-true}" = "true" ]; then
        chatstudio migrate
    fi
    exec chatstudio serve --workers "${WORKERS:-2}" "$@"
fi
exec chatstudio "$@"
