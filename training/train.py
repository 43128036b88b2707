"""Fine-tuning, top to bottom: data, model, loop, dev evaluation with the official metric, checkpoints.

`runs/NAME/best/` is the checkpoint with the best dev F1 (NER F1 for `ner`, relations-given-gold-entities F1
for `re`); `runs/NAME/last/` holds the latest weights with the optimizer state, so an interrupted run
continues where it stopped when started again with the same command.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn
from tqdm import tqdm

from app.errors import InputError
from app.metric import Report
from app.pipeline import Pipeline
from app.text.brat import read_corpus
from app.text.encode import encode_document
from app.text.subwords import WordPieces
from app.text.tags import BIO_LABELS, RELATION_LABELS
from training.config import TrainConfig
from training.crf import BioCRF
from training.data import IGNORE, Example, corpus_hash, ner_examples, re_examples, split_documents
from training.evaluate import evaluate_end_to_end, evaluate_ner, evaluate_relations_given_entities
from training.models import (
    TAGGER_FILE,
    SequenceTagger,
    drop_fitted_heads,
    keep_layers,
    load_tagger,
    new_tagger,
    save_tagger,
    torch_tagger,
)

STATE_FILE = "trainer_state.pt"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def length_batches(examples: Sequence[Example], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length (less padding), in a seeded random order."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: len(examples[i].ids))
        batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in examples)
    words = max(len(e.first) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    first = torch.zeros((len(examples), words), dtype=torch.long)
    labels = {h: torch.full((len(examples), words), IGNORE, dtype=torch.long) for h in examples[0].labels}
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
        first[row, : len(e.first)] = torch.tensor(e.first)
        for h, values in e.labels.items():
            labels[h][row, : len(values)] = torch.tensor(values)
    batch = {"ids": ids, "mask": mask, "first": first, **{f"labels.{h}": v for h, v in labels.items()}}
    return {k: v.to(device) for k, v in batch.items()}


def loss_of(model: SequenceTagger, batch: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    logits = model(batch["ids"], batch["mask"])
    total = torch.zeros((), device=batch["ids"].device)
    for head, weight in weights.items():
        if weight == 0:
            continue
        per_piece = logits[head]
        index = batch["first"].unsqueeze(-1).expand(-1, -1, per_piece.size(-1))
        per_word = per_piece.gather(1, index)
        gold = batch[f"labels.{head}"]
        if head == "entity" and model.crf is not None:
            # Per word, as cross-entropy is, so that learning rates mean the same with and without it.
            words = gold != IGNORE
            loss = model.crf.nll(per_word, gold, words) / words.sum().clamp(min=1)
        else:
            flat = per_word.flatten(0, 1).float()
            loss = nn.functional.cross_entropy(flat, gold.flatten(), ignore_index=IGNORE)
        total = total + weight * loss
    return total


def dev_reports(config: TrainConfig, model: SequenceTagger, tokenizer, dev_gold) -> dict[str, Report]:
    """The dev figure that picks the checkpoint: NER F1, or relations-given-gold-entities F1."""
    model.eval()
    tagger = torch_tagger(model, tokenizer, config.max_pieces, config.typed_markers, config.context)
    if config.task == "ner":
        reports = {"ner": evaluate_ner(Pipeline(ner=tagger), dev_gold)}
    else:
        reports = {"re_gold": evaluate_relations_given_entities(Pipeline(re=tagger), dev_gold)}
    model.train()
    return reports


def end_to_end_report(config: TrainConfig, model: SequenceTagger, tokenizer, dev_gold) -> Report | None:
    """Relations from predicted entities, with the NER checkpoint `ner_model` (None without one)."""
    if not config.ner_model:
        return None
    ner_dir = Path(config.ner_model)
    if not (ner_dir / "config.json").exists():
        print(f"no NER checkpoint at {ner_dir}: skipping the end-to-end evaluation (train NER first)")
        return None
    device = str(tagger_device(model))
    ner_model, ner_tok, ner_info = load_tagger(ner_dir, device)
    ner = torch_tagger(ner_model, ner_tok, ner_info["max_pieces"], context=ner_info.get("context", 0))
    re = torch_tagger(model.eval(), tokenizer, config.max_pieces, config.typed_markers)
    return evaluate_end_to_end(Pipeline(ner=ner, re=re), dev_gold)


def init_tagger(config: TrainConfig, labels: dict[str, tuple[str, ...]], device: torch.device):
    """The trained tagger `config.init` (a checkpoint directory, or a bundle's model of this task rebuilt in
    torch), ready to train on: its heads must be this task's, its markers this run's."""
    source = Path(config.init)
    if (source / "manifest.json").is_file():
        from training.from_onnx import cached_checkpoint

        source = cached_checkpoint(source, config.task)
    elif not (source / TAGGER_FILE).is_file():
        raise InputError(
            f"init = {config.init!r}: neither a tagger checkpoint (no {TAGGER_FILE}) nor a model bundle "
            "(no manifest.json); give runs/NAME/best or a bundle such as models/default"
        )
    model, tokenizer, info = load_tagger(source, str(device))
    for head in drop_fitted_heads(model):
        print(f"init: dropping the {head!r} head (fit it again after training)")
    if {k: tuple(v) for k, v in model.labels.items()} != labels:
        have = sorted(model.labels)
        raise InputError(f"init = {config.init!r}: its heads {have} are not a {config.task} model's")
    if config.task == "re" and info.get("typed_markers") != config.typed_markers:
        raise InputError(
            f"init = {config.init!r} was trained with typed_markers = {info.get('typed_markers')}: "
            "set typed_markers to match"
        )
    if config.encoder_layers:
        keep_layers(model.encoder, config.encoder_layers, config.init)
    if config.crf and model.crf is None:
        model.crf = BioCRF(labels["entity"]).to(device)
    model.dropout.p = config.dropout
    return model.train(), tokenizer


def tagger_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train(config: TrainConfig) -> dict:
    """Run (or resume) one training run; returns the final metrics also written to `metrics.json`."""
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + config.time_limit if config.time_limit else float("inf")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = pick_device(config.device)

    docs = read_corpus(Path(config.corpus))
    if config.max_documents:
        docs = docs[: config.max_documents]
    train_names, dev_names = split_documents([d.name for d in docs], config.dev_fraction, config.split_seed)
    train_docs = [encode_document(d) for d in docs if d.name in set(train_names)]
    dev_gold = [d for d in docs if d.name in set(dev_names)]

    if config.task == "ner":
        labels = {"entity": BIO_LABELS}
        weights = {"entity": 1.0}
        markers = None
    else:
        labels = {"relation": RELATION_LABELS, "entity": BIO_LABELS}
        weights = {"relation": 1.0, "entity": config.ner_weight}
        markers = config.typed_markers
    last = out / "last"
    resuming = (last / STATE_FILE).exists()
    if resuming:
        model, tokenizer, _ = load_tagger(last, str(device))
        model.dropout.p = config.dropout
        model.train()
    elif config.init:
        model, tokenizer = init_tagger(config, labels, device)
    else:
        model, tokenizer = new_tagger(
            config.encoder, labels, config.dropout, markers, config.encoder_layers, config.crf
        )
        model.to(device).train()
    pieces = WordPieces(tokenizer.backend_tokenizer)
    if config.task == "ner":
        examples = ner_examples(train_docs, pieces, config.max_pieces, config.context)
    else:
        examples = re_examples(
            train_docs,
            pieces,
            config.max_pieces,
            config.typed_markers,
            config.keep_negatives,
            config.seed,
            config.rare_repeat,
            config.rare_below,
        )
    batches_per_epoch = len(length_batches(examples, config.batch_size, 0))
    total_steps = batches_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = []
    parts = [(model.encoder, config.lr), (model.heads, config.head_lr or config.lr)]
    if model.crf is not None:
        parts.append((model.crf, config.crf_lr))
    for part, lr in parts:
        named = list(part.named_parameters())
        decay = [p for n, p in named if not n.endswith(no_decay)]
        rest = [p for n, p in named if n.endswith(no_decay)]
        groups += [
            {"params": decay, "weight_decay": config.weight_decay, "lr": lr},
            {"params": rest, "weight_decay": 0.0, "lr": lr},
        ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(config.warmup * total_steps), max(total_steps, 1)
    )
    state = {"epoch": 0, "batch": 0, "step": 0, "best": -1.0, "stale": 0, "history": [], "seconds": 0.0}
    if resuming:
        saved = torch.load(last / STATE_FILE, map_location=device, weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        state.pop("stopped_by_time_limit", None)  # this invocation has its own time limit
        print(f"resuming {out} at epoch {state['epoch'] + 1}, batch {state['batch']}")

    meta = {
        "task": config.task,
        "max_pieces": config.max_pieces,
        **({"context": config.context} if config.context else {}),
        "typed_markers": config.typed_markers,
        "dropout": config.dropout,
        "encoder": config.encoder,
        **({"init": config.init} if config.init else {}),
        "config": config.as_dict(),
        "seed": config.seed,
        "dev_documents": dev_names,
        "train_documents": len(train_names),
        "data_sha256": corpus_hash(Path(config.corpus)),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "hardware": torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_name(),
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    use_amp = device.type == "cuda"

    def checkpoint() -> None:
        save_tagger(model, tokenizer, last, meta)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state},
            last / STATE_FILE,
        )

    # The best epoch's dev reports, kept so the end needs no second dev pass (None when the best epoch
    # ran before an interruption: then they are computed again from out/best).
    best_reports: dict[str, Report] | None = None
    print(
        f"{config.task}: {len(examples):,} training examples, {batches_per_epoch:,} batches per epoch, "
        f"{len(dev_gold)} dev documents, device {device}"
    )
    # A time limit is looked at after each step, so even one that has already passed trains one step and
    # evaluates it: the run always ends with a best checkpoint and its figures.
    stopped = bool(config.max_steps) and state["step"] >= config.max_steps
    while state["epoch"] < config.epochs and not stopped:
        epoch = state["epoch"]
        batches = length_batches(examples, config.batch_size, config.seed * 1000 + epoch)
        started = time.perf_counter()
        bar = tqdm(batches[state["batch"] :], desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        seen, losses = 0, []
        for group in bar:
            batch = collate([examples[i] for i in group], pad_id, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_of(model, batch, weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["batch"] += 1
            state["step"] += 1
            seen += len(group)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", ex_s=f"{seen / (time.perf_counter() - started):.1f}")
            if state["step"] % config.checkpoint_every == 0:
                state["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                seen = 0
                checkpoint()
            if _done(state, config, deadline):
                stopped = True
                break
        state["seconds"] += time.perf_counter() - started
        # Stopped inside the epoch (time limit, step cap): evaluated for the record, but the epoch is not
        # done, and a later invocation goes on from this batch (a GPU lease is cut into calls of minutes).
        partial = state["batch"] < len(batches)
        reports = dev_reports(config, model, tokenizer, dev_gold)
        main_key = "ner" if config.task == "ner" else "re_gold"
        f1 = reports[main_key].micro.f1
        state["history"].append(
            {
                "epoch": round(epoch + state["batch"] / len(batches), 3) if partial else epoch + 1,
                "step": state["step"],
                "loss": float(np.mean(losses)) if losses else float("nan"),
                "seconds": state["seconds"],
                **{k: r.micro.f1 for k, r in reports.items()},
                **({"partial": True} if partial else {}),
            }
        )
        done = f"{state['batch']}/{len(batches)} batches of " if partial else ""
        print(f"{done}epoch {epoch + 1}: dev {main_key} F1 {f1:.4f} (best {max(state['best'], f1):.4f})")
        if f1 > state["best"]:
            state["best"], state["stale"] = f1, 0
            best_reports = reports
            save_tagger(model, tokenizer, out / "best", meta)
            (out / "dev_report.md").write_text("\n\n".join(r.table() for r in reports.values()) + "\n")
        elif not partial:
            state["stale"] += 1
        if not partial:
            state["epoch"], state["batch"] = epoch + 1, 0
        checkpoint()
        _plot(state["history"], out / "training.png")
        # Written every epoch, so an interrupted run still shows its figures so far.
        (out / "metrics.json").write_text(json.dumps(_metrics(state, best_reports, meta), indent=2) + "\n")
        if state["stale"] > config.patience:
            print(f"no better dev F1 for {state['stale']} epochs: stopping")
            break

    best_model, best_tok, _ = load_tagger(out / "best", str(device))
    final = dict(best_reports or dev_reports(config, best_model, best_tok, dev_gold))
    e2e = end_to_end_report(config, best_model, best_tok, dev_gold)
    if e2e is not None:
        final["end_to_end"] = e2e
    metrics = _metrics(state, final, meta)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "dev_report.md").write_text("\n\n".join(r.table() for r in final.values()) + "\n")
    for name, report in final.items():
        print(f"\n{name}\n{report.table()}")
    return metrics


def cpu_name() -> str:
    """The CPU's model name and core count (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.machine()} CPU ({os.cpu_count()} cores)"


def _metrics(state: dict, reports: dict[str, Report] | None, meta: dict) -> dict:
    return {
        "best_epoch_history": state["history"],
        "dev": {k: r.as_dict() for k, r in (reports or {}).items()},
        "train_seconds": state["seconds"],
        "stopped_by_time_limit": state.get("stopped_by_time_limit", False),
        "hardware": meta["hardware"],
    }


def _done(state: dict, config: TrainConfig, deadline: float) -> bool:
    if time.monotonic() > deadline:
        state["stopped_by_time_limit"] = True
        return True
    return bool(config.max_steps) and state["step"] >= config.max_steps


def _plot(history: list[dict], path: Path) -> None:
    """Loss and dev F1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(title="training loss (epoch mean)", xlabel="epoch")
    for key in ("ner", "re_gold", "end_to_end"):
        if any(key in h for h in history):
            ax_f1.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    ax_f1.set(title="dev F1 (official metric)", xlabel="epoch")
    ax_f1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
