"""Regression check of a build's manifest against a baseline manifest, per target and check."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RegressionConfig
from .errors import EdgeforgeError
from .manifest import SCHEMA


@dataclass
class Comparison:
    target: str
    check: str
    passed: bool
    message: str
    skipped: bool = False
    old: float | None = None
    new: float | None = None


@dataclass
class CheckResult:
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    @property
    def exit_code(self) -> int:
        return 2 if self.failures else 0


def read_manifest(path: str | Path, role: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise EdgeforgeError(f"{role} manifest not found: {p}")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeforgeError(f"{p}: not a JSON manifest ({exc})") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise EdgeforgeError(f"{p}: manifest schema {got!r} is not {SCHEMA!r}; rebuild it with this edgeforge")
    return m


def _same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a["host"].get(k) == b["host"].get(k) for k in ("platform", "machine", "cpus"))


def compare(new: dict[str, Any], old: dict[str, Any], limits: RegressionConfig) -> CheckResult:
    if new["name"] != old["name"] or new["data"]["num_classes"] != old["data"]["num_classes"]:
        raise EdgeforgeError(
            f"the manifests describe different models ('{new['name']}' with {new['data']['num_classes']} classes vs "
            f"'{old['name']}' with {old['data']['num_classes']}); compare builds of the same model"
        )
    res = CheckResult()
    if new["data"]["sha256"] != old["data"]["sha256"]:
        res.notes.append("the evaluation data changed between the builds: accuracy deltas include the data change")
    same_machine = _same_machine(new, old)
    new_t = {t["name"]: t for t in new["targets"]}
    for name, o in ((t["name"], t) for t in old["targets"]):
        n = new_t.get(name)
        if n is None:
            res.comparisons.append(Comparison(name, "present", False, "target is in the baseline but missing from this build"))
            continue
        if n["status"] != "validated":
            res.comparisons.append(Comparison(name, "status", o["status"] != "validated",
                                              f"status {n['status']} (baseline {o['status']}): {n.get('reason', '')}"))
            continue
        if o["status"] != "validated":
            res.notes.append(f"{name}: the baseline was {o['status']}; nothing to compare against")
            continue
        res.comparisons += _compare_target(name, n, o, limits, same_machine)
    for name in sorted(set(new_t) - {t["name"] for t in old["targets"]}):
        res.notes.append(f"{name}: new target, not in the baseline")
    return res


def _compare_target(name: str, n: dict[str, Any], o: dict[str, Any], lim: RegressionConfig,
                    same_machine: bool) -> list[Comparison]:
    nm, om = n["metrics"], o["metrics"]
    out = []
    drop = (om["top1"] - nm["top1"]) * 100
    out.append(Comparison(name, "top1", drop <= lim.max_top1_drop_points,
                          f"top-1 {om['top1'] * 100:.2f}% -> {nm['top1'] * 100:.2f}% ({-drop:+.2f} pt, allowed -{lim.max_top1_drop_points} pt)",
                          old=om["top1"], new=nm["top1"]))
    rdrop = om["retention"] - nm["retention"]
    out.append(Comparison(name, "retention", rdrop <= lim.max_retention_drop,
                          f"retention {om['retention']:.4f} -> {nm['retention']:.4f} (allowed drop {lim.max_retention_drop})",
                          old=om["retention"], new=nm["retention"]))
    dinc = abs(nm["drift_points"]) - abs(om["drift_points"])
    out.append(Comparison(name, "drift", dinc <= lim.max_drift_increase_points,
                          f"|drift| vs {nm['reference']} {abs(om['drift_points']):.2f} -> {abs(nm['drift_points']):.2f} pt "
                          f"(allowed +{lim.max_drift_increase_points} pt)", old=om["drift_points"], new=nm["drift_points"]))
    growth = nm["size_bytes"] / om["size_bytes"] - 1
    out.append(Comparison(name, "size", growth <= lim.max_size_growth,
                          f"size {om['size_bytes']:,} -> {nm['size_bytes']:,} B ({growth:+.1%}, allowed +{lim.max_size_growth:.0%})",
                          old=om["size_bytes"], new=nm["size_bytes"]))
    nl, ol = nm.get("latency"), om.get("latency")
    if not nl or not ol:
        out.append(Comparison(name, "latency", True, "latency not measured in one of the builds", skipped=True))
    elif not same_machine or nl["measured_on"] != ol["measured_on"] or nl["threads"] != ol["threads"]:
        out.append(Comparison(name, "latency", True,
                              f"not compared: measured on different machines or settings ({ol['measured_on']} vs "
                              f"{nl['measured_on']}); compare latency only between builds on the same machine",
                              skipped=True))
    else:
        for p in ("p50_ms", "p90_ms"):
            if nl.get(p) is None or ol.get(p) is None:
                out.append(Comparison(name, f"latency_{p[:-3]}", True, f"{p[:-3]} not reported by the device tool",
                                      skipped=True))
                continue
            g = nl[p] / ol[p] - 1
            out.append(Comparison(name, f"latency_{p[:-3]}", g <= lim.max_latency_growth,
                                  f"{p[:-3]} latency {ol[p]:.4f} -> {nl[p]:.4f} ms ({g:+.1%}, allowed +{lim.max_latency_growth:.0%})",
                                  old=ol[p], new=nl[p]))
    return out


def to_junit(res: CheckResult, suite: str = "edgeforge.check") -> str:
    from xml.sax.saxutils import escape, quoteattr

    fails = len(res.failures)
    skipped = sum(1 for c in res.comparisons if c.skipped)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuites><testsuite name={quoteattr(suite)} tests="{len(res.comparisons)}" failures="{fails}" '
             f'errors="0" skipped="{skipped}">']
    for c in res.comparisons:
        lines.append(f"  <testcase classname={quoteattr(c.target)} name={quoteattr(c.check)}>")
        if not c.passed:
            lines.append(f"    <failure message={quoteattr(c.message)}>{escape(c.message)}</failure>")
        elif c.skipped:
            lines.append(f"    <skipped message={quoteattr(c.message)}/>")
        lines.append("  </testcase>")
    if res.notes:
        lines.append(f"  <system-out>{escape(chr(10).join(res.notes))}</system-out>")
    lines.append("</testsuite></testsuites>")
    return "\n".join(lines) + "\n"


def to_markdown(res: CheckResult, new_name: str, old_name: str) -> str:
    head = "regressed" if res.failures else "no regression"
    lines = [f"### edgeforge check: {head}", "", f"`{new_name}` against baseline `{old_name}`", "",
             "| target | check | result | detail |", "|---|---|---|---|"]
    for c in res.comparisons:
        verdict = "skipped" if c.skipped else ("pass" if c.passed else "**FAIL**")
        lines.append(f"| {c.target} | {c.check} | {verdict} | {c.message} |")
    for note in res.notes:
        lines.append(f"\n- {note}")
    return "\n".join(lines) + "\n"


def check(new_path: str | Path, baseline_path: str | Path, limits: RegressionConfig | None = None) -> CheckResult:
    new = read_manifest(new_path, "new")
    old = read_manifest(baseline_path, "baseline")
    return compare(new, old, limits or RegressionConfig())
