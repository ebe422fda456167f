#!/usr/bin/env bash
# Deploy (or upgrade) the stack in deploy/docker-compose.yml:
#   build the image, `chatstudio check`, back up the database, migrate, start, wait for /health/ready,
#   and roll back on its own (previous image, and the backup when a migration ran) if that gate fails.
#
# usage: deploy/deploy.sh [ENV_FILE]        (default: deploy/.env.production)
# environment: HEALTH_URL (https://localhost/health/ready), HEALTH_TIMEOUT seconds (180),
#              CHATSTUDIO_IMAGE (chatstudio), CA_FILE for HEALTH_URL's certificate (else -k).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$here/lib.sh"

env_file=$(realpath "${1:-$here/.env.production}")
load_env_file "$env_file" || die "could not load $env_file"
export CHATSTUDIO_ENV_FILE=$env_file

image=${CHATSTUDIO_IMAGE:-chatstudio}
health_url=${HEALTH_URL:-https://localhost/health/ready}
health_timeout=${HEALTH_TIMEOUT:-180}
backends=(backend-1 backend-2)
compose=(docker compose --project-directory "$here" -f "$here/docker-compose.yml")

heads_of() {  # the migration heads an image carries
    docker run --rm --entrypoint python "$1" -c \
        'from chatstudio.migrate import current_heads; print(" ".join(sorted(current_heads())))'
}

wait_ready() {
    local deadline=$((SECONDS + health_timeout)) tls=(-k)
    [[ -n ${CA_FILE:-} ]] && tls=(--cacert "$CA_FILE")
    while ((SECONDS < deadline)); do
        if curl -fsS "${tls[@]}" --max-time 5 -o /dev/null "$health_url"; then
            return 0
        fi
        sleep 2
    done
    return 1
}

previous=""
backup=""
migrated=false

rollback() {
    step "rollback"
    if [[ -z $previous ]]; then
        "${compose[@]}" stop "${backends[@]}" || true
        die "the first deployment failed its health gate; backends stopped (see: docker compose logs)"
    fi
    docker tag "$image:previous" "$image:latest"
    if [[ $migrated == true ]]; then
        echo "a migration ran: restoring $backup"
        "${compose[@]}" stop "${backends[@]}"
        "${compose[@]}" run --rm --no-deps -T "${backends[0]}" restore --yes "$backup"
    fi
    "${compose[@]}" up -d --no-build "${backends[@]}" nginx
    if wait_ready; then
        die "deployment failed; rolled back to the previous version, which is ready"
    fi
    die "deployment failed and the previous version is not ready either: act now"
}

step "build"
if docker image inspect "$image:latest" >/dev/null 2>&1; then
    previous=$(docker image inspect --format '{{.Id}}' "$image:latest")
    docker tag "$image:latest" "$image:previous"
    echo "previous image: $previous"
fi
GIT_DESCRIBE=$(git -C "$here/.." describe --tags --always --dirty 2>/dev/null || true)
export GIT_DESCRIBE
"${compose[@]}" build "${backends[0]}"

step "check"
"${compose[@]}" run --rm --no-deps -T "${backends[0]}" check

step "backup"
"${compose[@]}" up -d --wait postgres redis
backup="/app/data/backups/pre-deploy-$(date -u +%Y%m%dT%H%M%SZ).dump"
"${compose[@]}" run --rm --no-deps -T "${backends[0]}" backup --output "$backup"

step "migrate"
new_heads=$(heads_of "$image:latest")
old_heads=""
[[ -n $previous ]] && old_heads=$(heads_of "$image:previous")
[[ $new_heads != "$old_heads" ]] && migrated=true
"${compose[@]}" run --rm --no-deps -T "${backends[0]}" migrate

step "start"
"${compose[@]}" up -d --no-build --remove-orphans

step "health gate: $health_url"
if ! wait_ready; then
    rollback
fi
echo "deployed $(docker image inspect --format '{{.Id}}' "$image:latest")"
