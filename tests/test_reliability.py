"""Reliability: output-folder protection, the lock, stale temps, signals, reproducible Core ML packages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeforge import cli
from edgeforge.errors import EdgeforgeError
from edgeforge.lock import OutputLock
from edgeforge.outdir import MARKER, claim_output, clean_stale_temps


def test_new_folder_is_created_and_marked(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    claim_output(out)
    assert (out / MARKER).is_file()
    claim_output(out)  # ours now: claiming again is fine
    (out / "model.onnx").write_bytes(b"x")
    claim_output(out)


def test_users_folder_is_refused_and_untouched(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(EdgeforgeError, match=r"already holds files edgeforge did not write \(chapter1.tex\)"):
        claim_output(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.tex"]
    assert (mine / "chapter1.tex").read_text() == "precious"


@pytest.mark.parametrize("where", ["root", "home", "config", "above-config"])
def test_special_folders_are_refused(where: str, tmp_path: Path) -> None:
    cfg_dir = tmp_path / "proj"
    cfg_dir.mkdir()
    out = {"root": Path("/"), "home": Path.home(), "config": cfg_dir, "above-config": tmp_path}[where]
    with pytest.raises(EdgeforgeError, match="set 'output' to a folder of its own"):
        claim_output(out, config_dir=cfg_dir)
    assert not (out / MARKER).exists()


def test_empty_folder_and_leftover_lock_are_adopted(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_output(empty)
    old = tmp_path / "old-build"
    old.mkdir()
    (old / ".edgeforge.lock").write_text("123")
    claim_output(old)
    assert (old / MARKER).is_file()


def test_planted_marker_symlink_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(EdgeforgeError, match="is not edgeforge's marker file"):
        claim_output(out)


def test_lock_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".edgeforge.lock").symlink_to(victim)
    with pytest.raises(EdgeforgeError, match=r"\.edgeforge\.lock is a symbolic link; remove it"):
        with OutputLock(out):
            pass
    assert victim.read_text() == "keep me"


def test_lock_is_exclusive_and_removed_after_a_clean_exit(tmp_path: Path) -> None:
    with OutputLock(tmp_path):
        assert (tmp_path / ".edgeforge.lock").read_text() == str(os.getpid())
        child = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from edgeforge.lock import OutputLock\n"
                                f"with OutputLock(Path({str(tmp_path)!r})): pass"],
                               capture_output=True, text=True)
        assert child.returncode == 1 and f"pid {os.getpid()}" in child.stderr
    assert not (tmp_path / ".edgeforge.lock").exists()


def test_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "targets" / "t1").mkdir(parents=True)
    stale_dir = tmp_path / "targets" / "t1" / f".model.mlpackage.tmp-{dead.pid}"
    (stale_dir / "Data").mkdir(parents=True)
    stale_file = tmp_path / f".manifest.json.tmp-{dead.pid}"
    stale_file.write_text("{")
    live = tmp_path / f".student_qat.pt2.tmp-{os.getppid()}"  # a running process: left alone
    live.write_text("x")
    mine = tmp_path / "user-notes.tmp-1"  # not edgeforge's temp pattern
    mine.write_text("x")
    (tmp_path / "link").symlink_to(tmp_path.parent)  # never walked into
    lines: list[str] = []
    removed = clean_stale_temps(tmp_path, lines.append)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and mine.exists() and (tmp_path / "link").is_symlink()
    assert len(lines) == 2 and all("left by an interrupted build" in ln for ln in lines)


def _swallowing_command(signum: int, then: str):  # type: ignore[no-untyped-def]
    """A command whose library code catches the interrupt, as a broad ``except`` in an exporter would."""
    def run(args: object) -> int:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)
        except BaseException as exc:
            if then == "wrap":
                raise RuntimeError("export failed") from exc
        return 0
    return run


@pytest.mark.parametrize(("signum", "then", "code", "line"), [
    (signal.SIGINT, "swallow", 130, "edgeforge: interrupted"),
    (signal.SIGINT, "wrap", 130, "edgeforge: interrupted"),
    (signal.SIGTERM, "swallow", 143, "edgeforge: terminated (SIGTERM)"),
    (signal.SIGTERM, "wrap", 143, "edgeforge: terminated (SIGTERM)"),
])
def test_a_stop_is_never_swallowed(signum: int, then: str, code: int, line: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_cmd_targets", _swallowing_command(signum, then))
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["targets"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_sigterm_ends_a_real_build_with_one_line(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "EDGEFORGE_VERBOSE": "0", "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "edgeforge.cli", "build", str(make_config())],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    out = tmp_path / "out"
    deadline = time.monotonic() + 120
    while not (out / ".edgeforge.lock").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("edgeforge:")] == [
        "edgeforge: terminated (SIGTERM); finished stages are cached, run again to resume"]
    assert not (out / ".edgeforge.lock").exists()


def test_coreml_package_is_byte_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    from test_coreml import carrier_for, target

    from edgeforge.exporters import get_exporter
    from edgeforge.runtimes import get_runtime
    from edgeforge.validate import artifact_digest

    from tiny_models import TinyTeacher

    torch.manual_seed(0)
    model = TinyTeacher(num_classes=10)
    t = target("fp16", batch=1)
    digests = []
    for run in ("first", "second"):
        art = get_exporter("coreml").export(carrier_for(model, (1, 8, 8)), t, tmp_path / run / "m.mlpackage")
        digests.append(artifact_digest(art.path)[0])
    assert digests[0] == digests[1]
    assert not list(tmp_path.rglob("*.tmp-*"))
    manifest = (tmp_path / "first" / "m.mlpackage" / "Manifest.json").read_text()
    assert "conversion_date" not in (tmp_path / "first" / "m.mlpackage").joinpath(
        "Data", "com.apple.CoreML", "model.mlmodel").read_bytes().decode("latin-1")
    assert manifest.count('"path"') == 2
    x = torch.randn(1, 1, 8, 8)
    got = get_runtime("coreml").open(tmp_path / "second" / "m.mlpackage", t).run(x.numpy())
    assert got.shape == (1, 10)
    assert abs(torch.from_numpy(got).float() - model.eval()(x)).max() < 2e-2
