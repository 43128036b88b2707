"""Several training runs at once (seeds, ablations), each a plain `renersans train` process, then one table
of their dev figures. On one GPU the runs share the card: a small encoder leaves it mostly idle between
kernel launches, so running them side by side costs far less wall time than one after another.

    python -m training.scripts.sweep training/configs/sweep-gpu.toml --json runs/sweep.json

A plan is TOML: `parallel` (runs at once), `deadline` (seconds after which unfinished runs are stopped; 0 for
none) and one `[[run]]` table per run with `name`, `task`, `config` and `set` (a list of KEY=VALUE
overrides, as `renersans train --set`). Each run writes `runs/NAME/` and `runs/NAME.log`. Run again, a plan
resumes its runs from their last checkpoints; `--pending` leaves out those already through their last epoch,
`--set` adds a setting to every run and `--deadline` replaces the plan's (training/scripts/lease.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from app.errors import InputError
from training.config import TrainConfig


def load_plan(path: Path) -> dict:
    with open(path, "rb") as f:
        plan = tomllib.load(f)
    runs = plan.get("run", [])
    if not runs:
        raise InputError(f"{path}: no [[run]] tables")
    for run in runs:
        missing = {"name", "task", "config"} - set(run)
        if missing:
            raise InputError(f"{path}: run {run.get('name', '?')!r} lacks {sorted(missing)}")
    return plan


def finished(run: dict, runs_dir: Path) -> bool:
    """Whether the run has been through its last epoch: a run cut by a time limit or a deadline has not, and
    running the plan again resumes it (training/train.py)."""
    metrics = runs_dir / run["name"] / "metrics.json"
    if not metrics.exists():
        return False
    epochs = TrainConfig.load(Path(run["config"]), run.get("set", [])).epochs
    history = json.loads(metrics.read_text())["best_epoch_history"]
    return bool(history) and not history[-1].get("partial") and history[-1]["epoch"] == epochs


def command(run: dict, runs_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    settings = [f"output={runs_dir / run['name']}", *run.get("set", []), *extra]
    args = [sys.executable, "-m", "app.cli", "train", run["task"], "--config", run["config"]]
    return args + [a for s in settings for a in ("--set", s)]


def sweep(plan: dict, runs_dir: Path, threads: int, extra: Sequence[str] = ()) -> dict[str, dict]:
    """Start the runs, at most `parallel` at once, each with the settings `extra` after its own; stop what
    is left at the deadline; return each run's exit status, wall time and dev figures."""
    pending = list(plan["run"])
    parallel = int(plan.get("parallel", 1))
    deadline = time.monotonic() + plan["deadline"] if plan.get("deadline") else float("inf")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    running: dict[str, tuple[subprocess.Popen, float, IO]] = {}
    results: dict[str, dict] = {}
    runs_dir.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < parallel:
            run = pending.pop(0)
            log = open(runs_dir / f"{run['name']}.log", "w")  # noqa: SIM115 (closed when the run ends)
            args = command(run, runs_dir, extra)
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[run["name"]] = (proc, time.monotonic(), log)
            print(f"started {run['name']}: {' '.join(args[2:])}", flush=True)
        time.sleep(2)
        for name, (proc, started, log) in list(running.items()):
            if proc.poll() is None and time.monotonic() > deadline:
                proc.terminate()
                proc.wait()
            if proc.poll() is not None:
                log.close()
                del running[name]
                results[name] = {"returncode": proc.returncode, "wall_s": round(time.monotonic() - started)}
                print(
                    f"finished {name}: exit {proc.returncode} after {results[name]['wall_s']} s", flush=True
                )
    for name, result in results.items():
        metrics = runs_dir / name / "metrics.json"
        if metrics.exists():
            figures = json.loads(metrics.read_text())
            result["dev"] = {k: v["micro"] for k, v in figures["dev"].items()}
            result["epochs"] = len(figures["best_epoch_history"])
            result["train_seconds"] = round(figures["train_seconds"])
            result["stopped_by_time_limit"] = figures.get("stopped_by_time_limit", False)
            result["hardware"] = figures["hardware"]
    return results


def table(results: dict[str, dict]) -> str:
    lines = [
        "| run | exit | epochs | NER F1 | RE-gold F1 | end-to-end F1 | wall s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        dev = r.get("dev", {})
        f1 = [f"{dev[k]['f1']:.4f}" if k in dev else "" for k in ("ner", "re_gold", "end_to_end")]
        lines.append(
            f"| {name} | {r['returncode']} | {r.get('epochs', '')} | {' | '.join(f1)} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("plan", type=Path)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="where runs write (default: runs)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run (default: 2)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every run, after its own",
    )
    parser.add_argument("--deadline", type=float, help="seconds, instead of the plan's")
    parser.add_argument("--pending", action="store_true", help="only the runs not through their last epoch")
    args = parser.parse_args()
    plan = load_plan(args.plan)
    if args.deadline is not None:
        plan["deadline"] = args.deadline
    if args.pending:
        plan["run"] = [r for r in plan["run"] if not finished(r, args.runs)]
        print(f"to run: {[r['name'] for r in plan['run']]}", flush=True)
    results = sweep(plan, args.runs, args.threads, args.set)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
