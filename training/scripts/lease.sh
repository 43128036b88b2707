#!/bin/bash
# One call of a time-boxed GPU lease (the device machine; training/RESULTS.md):
#   bash training/scripts/lease.sh PLAN TIME_LIMIT DEADLINE [ner] [re]
# Resumes the plan's runs not yet finished (each with this call's TIME_LIMIT, the sweep stopped at DEADLINE
# seconds; TIME_LIMIT 0 runs nothing), then tars every run's figures to $OUT/runs.tgz and, for each task
# named, the best finished run's best checkpoint (fp16 safetensors, split into 15 MiB parts: the machine
# returns at most 8 files of 16 MiB). Best: dev NER F1, or end-to-end F1 for relations (fixed before the runs).
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
python3 - "$PLAN" "$TL" "$DL" <<'EOF'
import json, sys, tomllib
from pathlib import Path
path, tl, dl = sys.argv[1:4]
plan = tomllib.loads(Path(path).read_text())
def finished(run):
    m = Path("runs") / run["name"] / "metrics.json"
    epochs = int(next(s for s in run["set"] if s.startswith("epochs=")).split("=")[1])
    if not m.exists():
        return False
    h = json.loads(m.read_text())["best_epoch_history"]
    return bool(h) and not h[-1].get("partial") and h[-1]["epoch"] == epochs
todo = [r for r in plan["run"] if not finished(r)]
lines = [f"parallel = {len(todo) or 1}", f"deadline = {dl}"]
for r in todo:
    sets = ["corpus=.carry/rurebus"] + [s if not s.startswith("time_limit=") else f"time_limit={tl}" for s in r["set"]]
    lines += ["[[run]]", f"name = {json.dumps(r['name'])}", f"task = {json.dumps(r['task'])}",
              f"config = {json.dumps(r['config'])}", f"set = {json.dumps(sets)}"]
Path("/tmp/plan.toml").write_text("\n".join(lines) + "\n")
print("to run:", [r["name"] for r in todo], flush=True)
EOF
if [ "$TL" != 0 ] && grep -q "^\[\[run\]\]" /tmp/plan.toml; then
  python3 -m training.scripts.sweep /tmp/plan.toml --json runs/sweep-$(date +%s).json
fi
tar -czf "$OUT/runs.tgz" runs/*.log runs/*.json runs/*/metrics.json runs/*/config.json runs/*/dev_report.md runs/*/training.png 2>/dev/null
for task in "$@"; do
python3 - "$PLAN" "$task" <<'EOF'
import json, subprocess, sys, tomllib, os
from pathlib import Path
from safetensors.torch import load_file, save_file
path, task = sys.argv[1:3]
plan = tomllib.loads(Path(path).read_text())
runs = [r for r in plan["run"] if r["task"] == task]
key = "ner" if task == "ner" else "end_to_end"
scores = {}
for r in runs:
    m = Path("runs") / r["name"] / "metrics.json"
    if not m.exists():
        sys.exit(f"{r['name']}: no metrics yet")
    f = json.loads(m.read_text())
    h = f["best_epoch_history"]
    if not h or h[-1].get("partial") or key not in f["dev"]:
        sys.exit(f"{r['name']}: not finished")
    scores[r["name"]] = f["dev"][key]["micro"]["f1"]
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
