#!/usr/bin/env bash
# Post-deploy verification: verify.sh BASE_URL    e.g. deploy/verify.sh https://chat.example.com
#
# Checks liveness, readiness, the root page, that the API docs are off in production, the security
# headers (and HSTS over https), and, when SMOKE_EMAIL and SMOKE_PASSWORD name an existing account, a
# sign-in and one chat turn (SMOKE_MODEL picks the model; the test conversation is deleted afterwards).
# CA_FILE trusts a private certificate; INSECURE=1 skips certificate checks. Needs curl and python3.
set -euo pipefail

base=${1:?usage: verify.sh BASE_URL}
base=${base%/}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tls=()
[[ -n ${CA_FILE:-} ]] && tls=(--cacert "$CA_FILE")
[[ ${INSECURE:-0} == 1 ]] && tls=(-k)
failures=0

ok() { printf 'ok    %s\n' "$*"; }
fail() {
    printf 'FAIL  %s\n' "$*"
    failures=$((failures + 1))
}
check() {  # check OK_MESSAGE FAIL_MESSAGE COMMAND...
    local yes=$1 no=$2
    shift 2
    if "$@"; then ok "$yes"; else fail "$no"; fi
}
matches() { [[ $1 =~ $2 ]]; }

# request METHOD PATH [BODY_FILE]: status code on stdout; body in $work/body, headers in $work/headers.
# The bearer token travels in a header file, never on the command line.
request() {
    local method=$1 path=$2 body=${3:-} args=()
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "@$body")
    [[ -s $work/auth ]] && args+=(-H "@$work/auth")
    curl -sS "${tls[@]}" --max-time 60 -X "$method" -o "$work/body" -D "$work/headers" -w '%{http_code}' \
        "${args[@]}" "$base$path" || true
}

json() {  # json EXPR: evaluate EXPR on the last body (as `d`)
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$work/body" "$1"
}

header() {
    grep -i "^$1:" "$work/headers" | tail -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'
}

status=$(request GET /health)
if [[ $status == 200 && $(json 'd["status"]') == ok ]]; then
    ok "/health (version $(json 'd.get("version")'))"
else
    fail "/health answered $status"
fi

status=$(request GET /health/ready)
check "/health/ready" "/health/ready answered $status: $(cat "$work/body")" [ "$status" = 200 ]

status=$(request GET /)
# The root is the web client when it is installed, else the API's 404; either way the application
# (which stamps X-Request-ID) must answer, not a default page or an error of the proxy.
check "/ answered $status from the application" "/ answered $status without the application's X-Request-ID" \
    matches "$status $(header x-request-id)" '^(200|301|302|307|308|404) [A-Za-z0-9._:-]+$'
for name in x-content-type-options x-frame-options referrer-policy content-security-policy; do
    check "header $name" "header $name is missing" [ -n "$(header "$name")" ]
done
if [[ $base == https://* ]]; then
    check "HSTS" "HSTS header missing" matches "$(header strict-transport-security)" 'max-age=[1-9]'
fi

for path in /docs /openapi.json /metrics; do
    status=$(request GET "$path")
    check "$path is not public ($status)" "$path answered $status" matches "$status" '^(401|403|404)$'
done

if [[ -n ${SMOKE_EMAIL:-} && -n ${SMOKE_PASSWORD:-} ]]; then
    (umask 077 && python3 -c 'import json, os, sys; json.dump({"email": os.environ["SMOKE_EMAIL"], "password": os.environ["SMOKE_PASSWORD"]}, sys.stdout)' >"$work/login.json")
    status=$(request POST /api/v1/auth/login "$work/login.json")
    if [[ $status == 200 ]]; then
        ok "sign-in as $SMOKE_EMAIL"
        (umask 077 && printf 'Authorization: Bearer %s\n' "$(json 'd["access_token"]')" >"$work/auth")
        printf '{"title": "verify.sh smoke test"}' >"$work/conversation.json"
        status=$(request POST /api/v1/conversations "$work/conversation.json")
        if [[ $status == 201 ]]; then
            conversation=$(json 'd["id"]')
            SMOKE_MODEL=${SMOKE_MODEL:-} python3 -c 'import json, os, sys; body = {"content": "Reply with one short word.", "stream": False}; model = os.environ.get("SMOKE_MODEL"); body.update({"model": model} if model else {}); json.dump(body, sys.stdout)' >"$work/turn.json"
            status=$(request POST "/api/v1/conversations/$conversation/messages" "$work/turn.json")
            if [[ $status == 200 && $(json 'd["assistant_message"]["status"]') == completed ]]; then
                ok "chat round trip ($(json 'd["assistant_message"]["model"]'))"
            else
                fail "chat turn answered $status: $(head -c 300 "$work/body")"
            fi
            request DELETE "/api/v1/conversations/$conversation" >/dev/null
        else
            fail "creating a conversation answered $status"
        fi
    else
        fail "sign-in answered $status"
    fi
else
    echo "skip  sign-in and chat round trip (set SMOKE_EMAIL and SMOKE_PASSWORD)"
fi

if ((failures > 0)); then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
