from __future__ import annotations

from pathlib import Path

import pytest

from edgeforge.config import load_config
from edgeforge.errors import ConfigError
from edgeforge.targets import available, load_profile, resolve


def test_sample_config_parses() -> None:
    lc = load_config(Path(__file__).parent.parent / "samples" / "digits" / "edgeforge.yaml")
    assert lc.config.distill.temperature == 4.0
    assert lc.calibration().samples == 256
    assert lc.output_dir.name == "digits"


def test_unknown_key_names_file_path_and_allowed(make_config) -> None:  # type: ignore[no-untyped-def]
    path = make_config(**{"distill.temprature": 3})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "distill.temprature: unknown key" in msg and "temperature" in msg
    assert "\n" not in msg


def test_wrong_type_is_named(make_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"distill\.epochs: .*'many'"):
        load_config(make_config(**{"distill.epochs": "many"}))


def test_alpha_out_of_range(make_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"distill\.alpha"):
        load_config(make_config(**{"distill.alpha": 1.5}))


def test_teacher_needs_one_source(make_config) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="exactly one of factory, torchscript or program"):
        load_config(make_config(**{"teacher.torchscript": "t.ts"}))


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nteacher: [unclosed\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_config(p)


def test_missing_and_empty_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(tmp_path / "empty.yaml")


def test_overrides_apply_dotted_keys(make_config) -> None:  # type: ignore[no-untyped-def]
    lc = load_config(make_config(), {"gate.min_retention": 0.5, "qat.epochs": 1})
    assert lc.config.gate.min_retention == 0.5 and lc.config.qat.epochs == 1


def test_digest_changes_with_config(make_config) -> None:  # type: ignore[no-untyped-def]
    a = load_config(make_config()).digest()
    b = load_config(make_config(), {"qat.epochs": 3}).digest()
    assert a != b


def test_builtin_targets_load() -> None:
    names = available()
    assert {"onnx-cpu-fp32", "onnx-cpu-int8"} <= set(names)
    for path in names.values():
        assert load_profile(path).name == path.stem


def test_unknown_target_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'pixel-99'; did you mean 'pixel-8'\? available: .*onnx-cpu-int8"):
        resolve(["pixel-99"])


def test_bad_profile_field(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("name: mine\nformat: onnx\nprecision: int4\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: precision: "):
        resolve(["mine"], [tmp_path])
    (tmp_path / "mine.yaml").write_text("name: mine\nformat: onnx\nprecision: int8\nthreads: 4\n")
    with pytest.raises(ConfigError, match=r"threads: unknown key \(allowed: .*runtime"):
        resolve(["mine"], [tmp_path])
