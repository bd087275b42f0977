"""Token inputs end to end: JSON-lines documents tokenized with a local tokenizer file, a text teacher
distilled into the built-in transformer student, int8 QAT, ONNX and TFLite artifacts that take
token ids and an attention mask, validated in their runtimes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeforge.config import TextConfig
from edgeforge.data.text import load_text, load_tokenizer
from edgeforge.errors import ConfigError, DataError

from conftest import write_config
from tiny_models import TextTeacher, make_documents

pytest.importorskip("tokenizers")


def write_tokenizer(path: Path, words: int = 40, classes: int = 4) -> int:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[PAD]": 0, "[UNK]": 1} | {f"w{i}": 2 + i for i in range(words)}
    vocab |= {f"key{k}": 2 + words + k for k in range(classes)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(path))
    return len(vocab)


@pytest.fixture(scope="module")
def text_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    vocab = write_tokenizer(root / "tokenizer.json")
    for name, n, seed in (("train", 256, 0), ("val", 64, 1), ("test", 128, 2)):
        lines = [json.dumps({"text": t, "label": y}) for t, y in make_documents(n, seed)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    tc = TextConfig(tokenizer=str(root / "tokenizer.json"), max_length=16)
    tok = load_tokenizer(root / "tokenizer.json")
    train = load_text("train", root / "train.jsonl", tc, tok)
    torch.manual_seed(0)
    teacher = TextTeacher(vocab)
    opt = torch.optim.Adam(teacher.parameters(), lr=0.05)
    ids, mask = train.x  # type: ignore[misc]
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(teacher(ids, mask), train.y).backward()
        opt.step()
    torch.save(teacher.state_dict(), root / "teacher.pt")
    (root / "vocab").write_text(str(vocab))
    return root


def text_config(root: Path, out: Path, **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "text", "output": str(out), "progress": False, "preflight": False,
        "teacher": {"factory": "tiny_models:text_teacher", "checkpoint": str(root / "teacher.pt"),
                    "kwargs": {"vocab_size": int((root / "vocab").read_text())}},
        "student": {"family": "transformer", "width": 16, "depth": 1, "kwargs": {"heads": 2, "dropout": 0.0},
                    "embedding_from_teacher": "embed"},
        "data": {"kind": "text", "train": str(root / "train.jsonl"), "val": str(root / "val.jsonl"),
                 "test": str(root / "test.jsonl"), "calibration": {"samples": 64},
                 "text": {"tokenizer": str(root / "tokenizer.json"), "max_length": 16}},
        "distill": {"epochs": 8, "batch_size": 32, "lr": 0.005, "temperature": 2.0, "alpha": 0.5},
        "qat": {"epochs": 2, "batch_size": 32, "lr": 0.0005},
        "targets": ["onnx-cpu-fp32", "onnx-cpu-int8", "tflite-cpu-int8"],
        "gate": {"min_retention": 0.8, "max_drift_points": 3.0, "min_agreement": 0.9},
        "validation": {"warmup": 1, "runs": 3},
    }
    cfg.update(changes)
    return cfg


def test_documents_become_padded_ids_and_masks(text_assets: Path) -> None:
    tok = load_tokenizer(text_assets / "tokenizer.json")
    split = load_text("test", text_assets / "test.jsonl", TextConfig(tokenizer="t", max_length=16), tok)
    ids, mask = split.x  # type: ignore[misc]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape == (128, 16)
    first = json.loads((text_assets / "test.jsonl").read_text().splitlines()[0])["text"].split()
    n = min(len(first), 16)
    assert mask[0].tolist() == [1] * n + [0] * (16 - n) and (ids[0, n:] == 0).all()  # [PAD] is id 0
    assert ids[0, 0].item() == tok.token_to_id(first[0])
    int32 = load_text("test", text_assets / "test.jsonl", TextConfig(tokenizer="t", max_length=8, input_dtype="int32"),
                      load_tokenizer(text_assets / "tokenizer.json"))
    assert int32.x[0].dtype == torch.int32 and int32.x[0].shape == (128, 8)  # type: ignore[index]


def test_bad_text_input_is_one_line_naming_file_and_line(tmp_path: Path, text_assets: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "w1 w2", "label": 0}\n{"body": "w3", "label": 1}\n')
    tok = load_tokenizer(text_assets / "tokenizer.json")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: need a JSON object with 'text' and 'label'"):
        load_text("train", bad, TextConfig(tokenizer="t"), tok)
    (tmp_path / "tok.json").write_text("{}")
    with pytest.raises(DataError, match=r"tok\.json: not a tokenizers JSON file"):
        load_tokenizer(tmp_path / "tok.json")


def test_embedding_from_teacher_names_the_embeddings_it_could_use() -> None:
    from edgeforge.models.families.transformer import transformer
    from edgeforge.models.loading import embedding_from_teacher

    teacher, student = TextTeacher(46), transformer(1, 4, width=16, depth=1, vocab_size=46, max_len=16, heads=2)
    with pytest.raises(ConfigError, match="no nn.Embedding named 'emb'.*use one of: embed"):
        embedding_from_teacher(student, teacher, "emb")
    embedding_from_teacher(student, teacher, "embed")
    assert student.embed.weight.shape == (46, 16)  # type: ignore[union-attr]
    assert not torch.allclose(student.embed.weight, torch.zeros(46, 16))  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_text_build_ships_token_input_artifacts(text_assets: Path, tmp_path: Path) -> None:
    import onnx

    from edgeforge.pipeline import build

    out = tmp_path / "out"
    result = build(write_config(tmp_path / "t.yaml", text_config(text_assets, out)), log=lambda _m: None)
    m = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in m["data"]["inputs"]] == ["input_ids", "attention_mask"]
    assert {i["dtype"] for i in m["data"]["inputs"]} == {"int64"} and m["data"]["inputs"][0]["vocab_size"] == 46
    refs = m["models"]
    assert refs["teacher"]["top1"] > 0.9 and refs["float_student"]["top1"] > 0.8, refs
    for t in m["targets"]:
        assert t["status"] == "validated", (t["name"], t.get("reason"))
        assert t["metrics"]["agreement"] >= 0.9, (t["name"], t["metrics"])
    graph = onnx.load(next(out.glob("targets/onnx-cpu-int8/*.onnx"))).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [("input_ids", onnx.TensorProto.INT64),
                                                                            ("attention_mask", onnx.TensorProto.INT64)]
    assert np.isfinite([t["metrics"]["top1"] for t in m["targets"]]).all()
    # litert-torch leaves the transformer's layer norms, softmax and embedding float: the full-int8 check
    # fails the build and names each island by the student module it came from
    failed = [(t["name"], c["name"], c["message"]) for t in m["targets"] for c in t["checks"] if not c["passed"]]
    assert [(n, c) for n, c, _ in failed] == [("tflite-cpu-int8", "float_ops")] and result.exit_code == 2
    assert "embed: embedding (EMBEDDING_LOOKUP)" in failed[0][2] and "layers.0.norm1: layer_norm" in failed[0][2]
