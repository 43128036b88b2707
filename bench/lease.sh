#!/bin/bash
# Issue #8's GPU figures in one lease of the device machine (BENCHMARKS.md, "GPU"): ours with ONNX
# Runtime's CUDA provider against baselines (a) and (b) on CUDA, cross-request batching, growth with length,
# footprint. A call carries at most 64 MiB and the machine goes back 30 s after a call, so what it needs
# travels in seven calls made one after another, each `take`ing its part, the last one running:
#
#   here:    bash bench/lease.sh prepare [ORT_GPU_WHEEL]   # .carry/gpu-bench/1..7, each under 60 MB (venv on PATH)
#            bash bench/lease.sh stash                     # the bundle's fp16 files out of the working tree
#   device:  bash bench/lease.sh take N                    # N = 1..6, carry .carry/gpu-bench/N
#            bash bench/lease.sh take 7 && bash bench/lease.sh run 420
#   here:    bash bench/lease.sh unstash                   # the fp16 files back, checked against the manifest
#            tar -xzf $FILES_AT/results.tgz                # bench/results/*-cuda*.json, PNGs and the logs
#
# Part 1-5: onnxruntime-gpu (the image's onnxruntime has no CUDA provider; the wheel is 256 MB) in 55 MiB
# pieces, then the small wheels the image lacks and the corpus; 6 and 7: the two fp16 models. `run` installs
# the lot under /tmp (the machine's Python is 3.12), checks that a session really starts on CUDA, then runs
# the benchmarks most wanted first, each bounded, packing the results after each so a cut run still returns
# what it finished.
set -u -o pipefail  # a failing command before `| tee` fails its line
cd "$(dirname "$0")/.."
STAGE=.carry/gpu-bench
LEASE=/tmp/lease
STASH=/tmp/lease-stash
MODELS=(ner re)

# The serving packages the device image lacks, at the versions this checkout runs with.
SMALL=(razdel pydantic pydantic_core pydantic-settings python-dotenv annotated-types typing-inspection fastapi
  starlette uvicorn python-multipart)

prepare() {
  local wheel=${1:-/tmp/ortgpu/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl}
  if [ ! -f "$wheel" ]; then
    echo "no $wheel: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12" \
      "--implementation cp --platform manylinux_2_28_x86_64 -d /tmp/ortgpu onnxruntime-gpu==1.31.1" >&2
    exit 1
  fi
  rm -rf "$STAGE" && mkdir -p "$STAGE"/{1,2,3,4,6,7} "$STAGE/5/whl"
  split -b 55m -d "$wheel" "$STAGE/ort.whl." || exit 1
  local parts=("$STAGE"/ort.whl.*)
  [ "${#parts[@]}" -le 5 ] || { echo "the wheel needs ${#parts[@]} parts; this plan has room for 5" >&2; exit 1; }
  for i in "${!parts[@]}"; do mv "${parts[$i]}" "$STAGE/$((i + 1))/"; done
  local pins=()
  for name in "${SMALL[@]}"; do
    pins+=("$name==$(python3 -c "import importlib.metadata as m; print(m.version('$name'))")") || exit 1
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$STAGE/5/whl" "${pins[@]}" || exit 1
  tar -cJf "$STAGE/5/rurebus.tar.xz" -C ../shared rurebus/train_part_1 rurebus/train_part_2 \
    rurebus/train_part_3 || exit 1
  cp models/default/ner/model.fp16.onnx "$STAGE/6/model.fp16.onnx.ner" || exit 1
  cp models/default/re/model.fp16.onnx "$STAGE/7/model.fp16.onnx.re" || exit 1
  du -sh "$STAGE"/*
  git ls-files -z | grep -zv 'model\.fp16\.onnx$' | du -ch --files0-from=- | tail -1 | sed 's/total/working tree without the fp16 files/'
}

stash() {  # the working tree travels with every call: without the bundle's 107 MB of fp16 files
  mkdir -p "$STASH"
  for m in "${MODELS[@]}"; do
    [ -f "models/default/$m/model.fp16.onnx" ] && mv "models/default/$m/model.fp16.onnx" "$STASH/$m.onnx"
  done
  ls -la "$STASH"
}

unstash() {
  for m in "${MODELS[@]}"; do
    [ -f "$STASH/$m.onnx" ] && mv "$STASH/$m.onnx" "models/default/$m/model.fp16.onnx"
  done
  python3 -m app.cli bundle check models/default
}

take() {  # on the device: keep this call's part outside the repository, which the next call replaces
  mkdir -p "$LEASE/whl"
  cp -r "$STAGE/$1/." "$LEASE/" && ls -la "$LEASE" "$LEASE/whl"
}

pack() {
  tar -czf "$OUT/results.tgz" bench/results/*cuda* "$LEASE"/logs 2>/dev/null
}

step() {  # step NAME CAP_SECONDS COMMAND...: bounded by its cap and by what is left of the run's budget
  local name=$1 cap=$2 left=$((DEADLINE - $(date +%s)))
  shift 2
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 30 ]; then echo "== $name: skipped, $left s left" | tee -a "$LEASE/logs/steps.log"; return; fi
  echo "== $name ($cap s): $*" | tee -a "$LEASE/logs/steps.log"
  timeout "$cap" "$@" 2>&1 | tee "$LEASE/logs/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$LEASE/logs/steps.log"
  pack
}

run() {
  DEADLINE=$(($(date +%s) + $1))
  mkdir -p "$LEASE/logs"
  if [ ! -d /tmp/site/onnxruntime ]; then  # a second `run` on the same machine skips this
    cat "$LEASE"/ort.whl.* > "$LEASE/whl/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl" || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$LEASE"/whl/*.whl || exit 1
    rm -f "$LEASE"/ort.whl.* "$LEASE"/whl/onnxruntime_gpu-*.whl  # 256 MB that /tmp need not hold twice
  fi
  [ -d "$LEASE/rurebus" ] || tar -xJf "$LEASE/rurebus.tar.xz" -C "$LEASE" || exit 1
  for m in "${MODELS[@]}"; do cp "$LEASE/model.fp16.onnx.$m" "models/default/$m/model.fp16.onnx" 2>/dev/null; done
  # The CUDA provider loads cuBLAS, cuDNN and the runtime by name: from the image's nvidia-* packages.
  local libs
  libs=$(find "$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')/nvidia" \
    -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export LD_LIBRARY_PATH=$libs:${LD_LIBRARY_PATH:-} RENERSANS_CACHE_DIR=$LEASE/cache
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LEASE/logs/gpu.log"
  python3 -m app.cli bundle check models/default || exit 1
  python3 - <<'EOF' 2>&1 | tee -a "$LEASE/logs/gpu.log" || { pack; exit 1; }
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
s = ort.InferenceSession("models/default/ner/model.fp16.onnx", providers=["CUDAExecutionProvider"])
print("session providers:", s.get_providers())
assert s.get_providers()[0] == "CUDAExecutionProvider", "the CUDA provider did not start: see the log above"
EOF
  local corpus=(--corpus "$LEASE/rurebus")
  step pipeline 200 python3 -m bench.pipeline --device cuda "${corpus[@]}" --docs 3 --rounds 5 --out pipeline-cuda
  # Which batches suit a GPU: the CPU's padding cap, none, or 128 rows (today's CUDA default is the CPU's).
  step batches 90 python3 -m bench.pipeline --device cuda "${corpus[@]}" --docs 3 --rounds 3 \
    --systems ours,ours-uncapped,ours-wide --out ablation-batches-cuda
  step http 170 python3 -m bench.http_load --device cuda "${corpus[@]}" --parts latency,batching --pairs 10 \
    --batching-rounds 3 --burst-seconds 15 --out http-cuda
  step scaling 120 python3 -m bench.scaling --device cuda "${corpus[@]}" --baseline-pages 30 --paper-pages 10
  step footprint 90 python3 -m bench.footprint --device cuda "${corpus[@]}" --repeats 2
  ls -la "$OUT"
}

case ${1:-} in
  prepare) prepare "${2:-}" ;;
  stash) stash ;;
  unstash) unstash ;;
  take) take "$2" ;;
  run) run "${2:-420}" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
