#!/bin/bash
# One call of a time-boxed GPU lease (the device machine; training/RESULTS.md):
#   bash training/scripts/lease.sh PLAN TIME_LIMIT DEADLINE [ner] [re]
# Resumes the plan's runs not yet finished (`sweep --pending`: each with this call's TIME_LIMIT, the sweep
# stopped at DEADLINE seconds; TIME_LIMIT 0 runs nothing), then tars every run's figures to $OUT/runs.tgz
# and, for each task named, the best finished run's best checkpoint (fp16 safetensors, split into 15 MiB
# parts: the machine returns at most 8 files of 16 MiB). Best: dev NER F1, or end-to-end F1 for relations
# (fixed before the runs).
# Here: `cat NAME.tar.* | tar -xf - -C runs` after `tar -xzf runs.tgz`.
# Expects, carried in the ignored .carry/: razdel's wheel (whl/) and the corpus as rurebus.tar.xz; and the
# encoder at encoders/e5-small-ru stored as fp16 (`renersans encoder import-e5 ... --dtype float16`).
set -u
cd "$(dirname "$0")/../.."
PLAN=$1; TL=$2; DL=$3; shift 3
python3 -m zipfile -e .carry/whl/razdel-*.whl /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -d .carry/rurebus ] || tar -xJf .carry/rurebus.tar.xz -C .carry || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "$TL" != 0 ]; then
  python3 -m training.scripts.sweep "$PLAN" --pending --deadline "$DL" --set corpus=.carry/rurebus \
    --set "time_limit=$TL" --json "runs/sweep-$(date +%s).json"
fi
tar -czf "$OUT/runs.tgz" runs/*.log runs/*.json runs/*/metrics.json runs/*/config.json runs/*/dev_report.md runs/*/training.png 2>/dev/null
for task in "$@"; do
python3 - "$PLAN" "$task" <<'EOF'
import json, subprocess, sys, os
from pathlib import Path
from safetensors.torch import load_file, save_file
from training.scripts.sweep import finished, load_plan
path, task = sys.argv[1:3]
runs = [r for r in load_plan(Path(path))["run"] if r["task"] == task]
key = "ner" if task == "ner" else "end_to_end"
scores = {}
for r in runs:
    dev = json.loads((Path("runs") / r["name"] / "metrics.json").read_text())["dev"] if finished(r, Path("runs")) else {}
    if key not in dev:
        sys.exit(f"{r['name']}: not finished")
    scores[r["name"]] = dev[key]["micro"]["f1"]
best = max(scores, key=scores.get)
print(task, scores, "->", best, flush=True)
src = Path("runs") / best / "best"
# Packed as NAME/best, so that it unpacks beside runs.tgz's runs/NAME/ (its config.json is the run's).
dst = Path("/tmp/pack") / best / "best"
subprocess.run(["rm", "-rf", str(dst.parent)]); dst.parent.mkdir(parents=True, exist_ok=True)
subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
t = load_file(str(dst / "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in t.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
out = os.environ["OUT"]
subprocess.run(f"tar -cf - -C /tmp/pack {best} | split -b 15m -d - {out}/{best}.tar.", shell=True, check=True)
EOF
done
ls -la "$OUT"
