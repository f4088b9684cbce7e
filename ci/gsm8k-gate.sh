#!/usr/bin/env bash
# GSM8K accuracy gate, as CI uses it: reach a server (or start the embedded one), run lm-eval's
# gsm8k task, gate the run against a baseline, keep every artifact.
#
#   ci/gsm8k-gate.sh                                   # embedded model: start it, run --limit 20 of the
#                                                      # generated task, gate
#   BASE_URL=http://127.0.0.1:8000/v1 MODEL=deepseek-ai/DeepSeek-V3.2 \
#   BASELINE=evals/baselines/dsv32-tp4-mi355x-bs64-reference.json LIMIT= ci/gsm8k-gate.sh
#
# Environment: BASE_URL, MODEL (server runs), BASELINE (default: a baseline made by a reference run
# of the embedded model), LIMIT (default 20 for the embedded model; empty = all 1319), ARTIFACTS
# (default artifacts/gsm8k), CONFIDENCE (0.95), FLOOR, GSM8K_DATA_DIR (GSM8K JSONL for machines without
# network; default: lm-eval's hub dataset), EXTRA_RUN_ARGS, SERVE_ARGS (the served kernel, e.g.
# "--backend triton --buffer padded"), MODEL_ARGS (the embedded model itself, e.g. "--untrained": given to
# the server and to the reference run that makes the baseline, so that the two run the same model).
# Exit status: the gate's (0 pass, 1 regression, 2 unusable input), or the run's failure.
set -euo pipefail
up() { python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; }
cd "$(dirname "$0")/.."
ART="${ARTIFACTS:-artifacts/gsm8k}"
mkdir -p "$ART"
CONF=(--confidence "${CONFIDENCE:-0.95}")
[[ -n "${FLOOR:-}" ]] && CONF+=(--floor "$FLOOR")

if [[ -n "${BASE_URL:-}" ]]; then
  : "${MODEL:?MODEL must name the served model}"
  : "${BASELINE:?BASELINE must name a baseline file for this model x hardware x config}"
  LIMIT_ARGS=(); [[ -n "${LIMIT:-}" ]] && LIMIT_ARGS=(--limit "$LIMIT")
  for _ in $(seq 60); do up "${BASE_URL%/}/models" && break; sleep 5; done
  python -m evals gsm8k run --base-url "$BASE_URL" --model "$MODEL" --out "$ART/run" "${LIMIT_ARGS[@]}" \
    ${EXTRA_RUN_ARGS:-} || { echo "gsm8k run failed; see $ART/run/run.json"; exit 2; }
else
  # The embedded model behind its own HTTP server on a free port, as a vLLM server would be, on its
  # own generated task (GSM8K cannot see its indexer).
  LIMIT="${LIMIT-20}"; LIMIT_ARGS=(); [[ -n "$LIMIT" ]] && LIMIT_ARGS=(--limit "$LIMIT")
  python -m evals gsm8k make-data "$ART/data" >/dev/null
  PORT="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # The trained model's window (2000 tokens) holds the generated 5-shot prompts; --truncate-prompts
  # matters only with MODEL_ARGS=--untrained (a 1000-token window): each cut is then reported.
  python -m evals serve --port "$PORT" --log "$ART/server_requests.jsonl" --truncate-prompts ${MODEL_ARGS:-} \
    ${SERVE_ARGS:-} >"$ART/server.log" 2>&1 &
  SERVER_PID=$!
  trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do up "http://127.0.0.1:$PORT/health" && break; sleep 0.2; done
  # The served run and the reference run generate alike (the embedded run's own default length), and
  # the served run measures its prompts against the served model's top-k, not a server's default 2048.
  MAX_GEN="$(python -c 'from evals.synth import MAX_GEN_TOKS; print(MAX_GEN_TOKS)')"
  TOPK="$(python -c 'import sys; from evals.weights import embedded_config as c
print(c(untrained="--untrained" in sys.argv[1:]).index_topk)' ${MODEL_ARGS:-})"
  python -m evals gsm8k run --base-url "http://127.0.0.1:$PORT/v1" --model tiny-indexer-lm --batch-size 8 \
    --max-gen-toks "$MAX_GEN" --index-topk "$TOPK" --data-dir "$ART/data" --out "$ART/run" "${LIMIT_ARGS[@]}" ${EXTRA_RUN_ARGS:-} \
    || { echo "gsm8k run failed; see $ART/run/run.json"; exit 2; }
  if [[ -z "${BASELINE:-}" ]]; then
    # The reference backend at the same limit is the baseline (evals/baselines holds the full-set one).
    python -m evals gsm8k run --out "$ART/reference" --data-dir "$ART/data" --truncate-prompts \
      --max-gen-toks "$MAX_GEN" ${MODEL_ARGS:-} "${LIMIT_ARGS[@]}"
    python -m evals gsm8k baseline "$ART/reference" -o "$ART/baseline.json" --name embedded-reference
    BASELINE="$ART/baseline.json"
  fi
fi

set +e
python -m evals gsm8k gate "$ART/run" --baseline "$BASELINE" "${CONF[@]}" | tee "$ART/gate.txt"
rc=${PIPESTATUS[0]}
echo "artifacts: $ART (run.json, results.json, samples_gsm8k.jsonl, gate.txt)"
exit "$rc"
