"""Distil all-MiniLM-L6-v2 into a static token table (model2vec-style): one int8 vector per word piece.

Every vocabulary entry is run through the encoder alone (`[CLS] piece [SEP]`, mean-pooled as the
sentence-transformers model pools); the outputs are L2-normalised, centred and rotated onto their
principal components (PCA), and quantised to 63 levels (stored as int8, so the compressed table is
~7 MB) with one float scale per row. Run once at build time (it needs torch); inference reads only
the table (`router.decide.classify.static.StaticTable`).

Choices, each made on the validation split of the training data (bench/RESULTS.md has the numbers):
all 384 components are kept (PCA to 128 or 256 lost 4 and 1 points of validation accuracy), and no
SIF/Zipf weighting is applied (it lost accuracy at every strength tried: the logistic head learns
which pieces matter, and frequent pieces such as "write" or "explain" do).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

DIMS = 384
LEVELS = 31
"""Quantised values run from -LEVELS to LEVELS: 63 levels lose nothing measurable against 255 and compress better."""


def embed_vocabulary(model_path: Path, batch: int = 1024) -> np.ndarray:
    """The encoder's mean-pooled output for every vocabulary entry on its own (vocab × 384, float32)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_pretrained(model_path).eval()
    size = len(tokenizer.get_vocab())
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = np.zeros((size, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, size, batch):
            ids = torch.arange(start, min(size, start + batch)).unsqueeze(1)
            input_ids = torch.cat([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            hidden = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).numpy()
    return out


def pca(vectors: np.ndarray, dims: int) -> np.ndarray:
    """Project onto the top `dims` principal components (centred; components ordered by variance)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    projected: np.ndarray = (centred @ vt[:dims].T).astype(np.float32)
    return projected


def quantise(vectors: np.ndarray, levels: int = LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and a float32 scale per row, so that `rows * scale` ≈ `vectors` (max-abs per row)."""
    peak = np.abs(vectors).max(axis=1)
    scale = np.where(peak > 0, peak / levels, 1.0).astype(np.float32)
    rows = np.clip(np.rint(vectors / scale[:, None]), -levels, levels).astype(np.int8)
    return rows, scale


def distil(model_path: Path, dims: int = DIMS) -> tuple[np.ndarray, np.ndarray]:
    """The shipped table: int8 rows (vocab × dims) and their scales."""
    vectors = embed_vocabulary(model_path)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return quantise(pca(vectors, dims))


def write_table(path: Path, rows: np.ndarray, scale: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez_compressed(fh, rows=rows, scale=scale.astype(np.float32))
