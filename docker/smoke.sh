#!/usr/bin/env bash
# Smoke test of the compose deployment, run from anywhere in the checkout on the host that will serve:
# build the image, start the service, wait for /ready, send a Russian document to /extract, check the
# answer and the execution provider (/version), then stop everything again.
#
#   docker/smoke.sh            # the gpu profile: the models must run on CUDAExecutionProvider
#   docker/smoke.sh cpu        # the cpu profile: CPUExecutionProvider
#
# Needs docker with the compose plugin (v2) and curl; the checks run in the container's own Python.
# SMOKE_READY_TIMEOUT (seconds, default 300) bounds the wait for /ready; SMOKE_KEEP=1 leaves the service
# running afterwards. RENERSANS_HTTP_PORT and RENERSANS_API_KEY are honoured as in docker-compose.yml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile="${1:-gpu}"
case "$profile" in
    gpu) provider=CUDAExecutionProvider ;;
    cpu) provider=CPUExecutionProvider ;;
    *)
        echo "usage: $0 [gpu|cpu]" >&2
        exit 2
        ;;
esac
service="$profile"
base="http://127.0.0.1:${RENERSANS_HTTP_PORT:-8000}"
ready_timeout="${SMOKE_READY_TIMEOUT:-300}"
compose=(docker compose --profile "$profile")
auth=()
if [[ -n "${RENERSANS_API_KEY:-}" ]]; then
    auth=(-H "X-API-Key: ${RENERSANS_API_KEY}")
fi
work="$(mktemp -d)"

say() { printf '\n==> %s\n' "$*"; }
fail() {
    printf '\nSMOKE FAILED: %s\n' "$*" >&2
    exit 1
}

for tool in docker curl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
docker compose version >/dev/null 2>&1 || fail "the docker compose plugin (v2) is missing"
docker info >/dev/null 2>&1 || fail "cannot reach the Docker engine (is it running? may this user use it?)"

started=0
finish() {
    status=$?
    if [[ $status -ne 0 && $started -eq 1 ]]; then
        echo "--- last log lines of $service ---" >&2
        "${compose[@]}" logs --no-color --tail 60 "$service" >&2 || true
    fi
    if [[ $started -eq 1 && "${SMOKE_KEEP:-0}" != 1 ]]; then
        say "docker compose down"
        "${compose[@]}" down --remove-orphans --timeout 45 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap finish EXIT

say "building the $profile image"
"${compose[@]}" build "$service"

say "starting the $service service"
started=1
"${compose[@]}" up -d "$service" || fail "docker compose up failed (on a GPU host: is the NVIDIA Container \
Toolkit installed and the driver new enough for CUDA 13? See docs/deployment.md)"

say "waiting up to ${ready_timeout}s for $base/ready"
deadline=$((SECONDS + ready_timeout))
until curl -fsS --max-time 5 "$base/ready" -o "$work/ready.json" 2>/dev/null; do
    if [[ -n "$("${compose[@]}" ps --all --quiet --status exited --status restarting "$service")" ]]; then
        fail "the container stopped before it was ready"
    fi
    if ((SECONDS >= deadline)); then
        curl -sS --max-time 5 "$base/ready" >&2 || true
        fail "not ready after ${ready_timeout}s"
    fi
    sleep 3
done
echo "ready: $(cat "$work/ready.json")"

# The same checker for every answer, in the image's Python (no jq or python needed on the host).
check() {
    "${compose[@]}" exec -T "$service" python -c "$1" "${@:2}"
}

say "POST /extract with a Russian document"
# (No quotes or backslashes in it, so it goes into the JSON as it is.)
text="Правительство Новосибирской области утвердило государственную программу развития малого и среднего \
предпринимательства на 2019–2024 годы. Объём финансирования программы составит 2,5 млрд рублей, из них \
1,2 млрд рублей — средства областного бюджета. Основная цель — увеличение числа субъектов малого бизнеса \
и рост занятости населения."
printf '{"text": "%s", "relations": true}' "$text" >"$work/request.json"
code="$(curl -sS --max-time 120 -o "$work/extract.json" -w '%{http_code}' ${auth[@]+"${auth[@]}"} \
    -H 'Content-Type: application/json' --data-binary "@$work/request.json" "$base/extract")" ||
    fail "POST /extract did not complete"
[[ "$code" == 200 ]] || fail "POST /extract answered $code: $(head -c 500 "$work/extract.json")"
check "$(
    cat <<'PY'
import json, sys
text = sys.argv[1]
answer = json.load(sys.stdin)
entities = answer.get("entities")
assert isinstance(entities, list), f"no entities list in the answer: {sorted(answer)}"
assert entities, "the default model found no entity in the sample document"
ids = set()
for e in entities:
    start, end = e["start"], e["end"]
    assert 0 <= start < end <= len(text), f"offsets {start}..{end} outside the text ({len(text)} chars): {e}"
    assert text[start:end] == e["text"], f"text[{start}:{end}] is {text[start:end]!r}, not {e['text']!r}"
    ids.add(e["id"])
relations = answer.get("relations")
assert isinstance(relations, list), "no relations list in the answer"
for r in relations:
    assert r["arg1"] in ids and r["arg2"] in ids, f"relation {r} names an entity not in the answer"
print(f"{len(entities)} entities, {len(relations)} relations, offsets valid:")
for e in entities:
    print(f"  {e['type']:5} {e['start']:4}-{e['end']:<4} {e['text']}")
PY
)" "$text" <"$work/extract.json" || fail "the /extract answer is wrong (above)"

say "GET /version: the models must run on $provider"
curl -fsS --max-time 10 "$base/version" -o "$work/version.json" || fail "GET /version failed"
check "$(
    cat <<'PY'
import json, sys
want = sys.argv[1]
model = json.load(sys.stdin).get("model") or {}
providers = model.get("providers") or {}
assert providers, f"/version reports no model providers: {model}"
wrong = {name: p for name, p in providers.items() if p != want}
assert not wrong, f"expected {want} for every model, got {providers}"
print(f"providers: {providers}")
PY
)" "$provider" <"$work/version.json" || fail "wrong execution provider (above)"

say "GET /metrics"
curl -fsS --max-time 10 "$base/metrics" -o "$work/metrics.txt" || fail "GET /metrics failed"
grep -q '^renersans_requests_total{' "$work/metrics.txt" || fail "/metrics has no renersans_requests_total"
grep -q '^renersans_model_info{' "$work/metrics.txt" || fail "/metrics has no renersans_model_info"
grep -E '^renersans_(documents|entities|relations)_total' "$work/metrics.txt" || true

say "SMOKE PASSED ($profile profile, $provider)"
