"""The HTML report: self-contained, and rendered by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeforge.html_report import render_html

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_report_is_self_contained_with_plots(tiny_build) -> None:  # type: ignore[no-untyped-def]
    _, result = tiny_build
    written = (result.manifest_path.parent / "report.html").read_text()
    assert written.startswith("<!DOCTYPE html>")
    page = render_html(result.manifest)  # the shared build folder may have been rebuilt by other tests since
    assert not re.search(r"(src|href)=['\"]?https?://", page), "the report must not load anything from the network"
    assert page.count("<svg") == 4  # size and latency trade-offs, latency distributions, per-class change
    for t in result.manifest["targets"]:
        assert t["name"] in page and t["artifact"]["sha256"] in page


def test_unvalidated_and_failed_targets_are_shown(tiny_build) -> None:  # type: ignore[no-untyped-def]
    import copy

    m = copy.deepcopy(tiny_build[1].manifest)
    m["targets"][0] = {**m["targets"][0], "status": "unvalidated", "reason": "needs macOS", "metrics": None}
    m["exit_code"] = 2
    page = render_html(m)
    assert "unvalidated: needs macOS" in page and "FAIL (gate)" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tiny_build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image, ImageStat

    page = tmp_path / "report.html"
    page.write_text(render_html(tiny_build[1].manifest))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 4 and "edgeforge build: tiny" in dom.stdout
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    img = Image.open(shot).convert("L")
    stat = ImageStat.Stat(img)
    assert stat.stddev[0] > 10, "screenshot is blank"
    # the plots are drawn: coloured pixels of the palette appear
    rgb = Image.open(shot).convert("RGB").resize((300, 600))
    colours = {px for px in rgb.getdata() if max(px) - min(px) > 80}
    assert len(colours) > 20
