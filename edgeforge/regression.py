"""Regression check of a build's manifest against a baseline manifest.

First whether the two builds can be compared at all (same model; same teacher, data and host
class, or else which numbers such a difference moves), then per target and check. A difference
of teacher, data or CPU is said before any number, so it is never read as a model regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RegressionConfig
from .errors import EdgeforgeError
from .manifest_read import read_manifest
from .metrics import label
from .records import Comparison

__all__ = ["CheckResult", "Comparison", "check", "compare", "read_manifest", "to_junit", "to_markdown"]


@dataclass
class CheckResult:
    comparisons: list[Comparison] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # why the builds are not alike: said first
    notes: list[str] = field(default_factory=list)
    skipped_targets: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    @property
    def exit_code(self) -> int:
        return 2 if self.failures else 0


def _cmp(target: str, check: str, passed: bool, message: str, *, old: Any = None, new: Any = None,
         limit: Any = None, skipped: bool = False) -> Comparison:
    return Comparison(target=target, check=check, passed=passed, new=new, old=old, limit=limit, message=message,
                      skipped=skipped)


def _short(digest: Any) -> str:
    return f"{digest[:12]}..." if isinstance(digest, str) else "not recorded"


def host_label(m: dict[str, Any]) -> str:
    """The host as a reader knows it: CPU model and int8 kernel class when recorded."""
    host = m.get("host") or {}
    cpu: dict[str, Any] = host["cpu"] if isinstance(host.get("cpu"), dict) else {}
    model = cpu.get("model") or host.get("machine") or "unknown"
    klass = cpu.get("int8_class")
    return f"{model}, {host.get('cpus', '?')} cpu(s)" + (f", {klass}" if klass else "")


def _int8_class(m: dict[str, Any]) -> Any:
    cpu = (m.get("host") or {}).get("cpu")
    return cpu.get("int8_class") if isinstance(cpu, dict) else None


@dataclass
class Alike:
    """What two builds share; each False turns some checks into 'not compared' with the reason."""

    teacher: bool = True
    data: bool = True
    machine: bool = True
    int8_kernels: bool = True
    why_top1: str = ""
    busy: str = ""  # why host latency is not comparable: a build ran on a busy machine


# Host latency is compared only between builds whose machine was this quiet (1-minute load per CPU).
QUIET_LOAD_PER_CPU = 0.5


def _busy(m: dict[str, Any], which: str) -> str:
    host = m.get("host") or {}
    load, cpus = host.get("load_average"), host.get("cpus") or 1
    if load is None or load / cpus < QUIET_LOAD_PER_CPU:
        return ""
    return f"the host was busy in {which} (load average {load:.2f} on {cpus} CPUs)"


def _accuracy_words(new: dict[str, Any]) -> tuple[str, str, str]:
    """What moves with the teacher and the data, for messages: top-1, and the build's metric if another."""
    metric = next((judged(t["metrics"])[0] for t in new["targets"] if t["status"] == "validated"), "top1")
    return ("top-1", "moves", "it is") if metric == "top1" else (f"top-1 and {label(metric)}", "move", "they are")


def _alike(new: dict[str, Any], old: dict[str, Any], res: CheckResult) -> Alike:
    a = Alike()
    acc, moves, is_ = _accuracy_words(new)
    nt, ot = new["models"]["teacher"].get("sha256"), old["models"]["teacher"].get("sha256")
    if nt and ot and nt != ot:
        a.teacher = False
        res.differences.append(f"the builds do not share a teacher (sha256 {_short(ot)} in the baseline, {_short(nt)} "
                               f"here): {acc} {moves} with the teacher, so {is_} not compared; retention and drift, "
                               "which are relative to the teacher, are")
    if new["data"]["sha256"] != old["data"]["sha256"]:
        a.data = False
        res.differences.append(f"the builds evaluated different data (sha256 {_short(old['data']['sha256'])} vs "
                               f"{_short(new['data']['sha256'])}): {acc} {is_.split()[1]} not compared; retention "
                               "and drift are")
    a.why_top1 = "different teachers" if not a.teacher else ("different data" if not a.data else "")
    hn, ho = host_label(new), host_label(old)
    a.machine = hn == ho and new["host"].get("machine") == old["host"].get("machine")
    nk, ok = _int8_class(new), _int8_class(old)
    a.int8_kernels = nk == ok if nk and ok else a.machine
    if not a.int8_kernels:
        res.differences.append(f"the builds ran on different host classes ('{ho}' vs '{hn}'): int8 kernels and float "
                               "training differ by CPU, so int8 results can move without a model change; build the "
                               "baseline on this host class to tell the two apart")
    elif not a.machine:
        res.differences.append(f"measured on different machines: host '{ho}' vs '{hn}': latency is not compared")
    a.busy = " and ".join(x for x in (_busy(old, "the baseline"), _busy(new, "this build")) if x)
    if a.busy and a.machine:
        res.differences.append(f"{a.busy}: host latency is compared only between builds on a quiet machine "
                               f"(load per CPU under {QUIET_LOAD_PER_CPU})")
    return a


def compare(new: dict[str, Any], old: dict[str, Any], limits: RegressionConfig, *,
            only_common: bool = False) -> CheckResult:
    """Compare ``new`` against the baseline ``old`` (both manifests as read by ``read_manifest``).

    ``only_common``: targets of the baseline missing from this build are listed as skipped, not failed.
    """
    if new["name"] != old["name"] or new["data"]["num_classes"] != old["data"]["num_classes"]:
        raise EdgeforgeError(
            f"the manifests describe different models ('{new['name']}' with {new['data']['num_classes']} classes vs "
            f"'{old['name']}' with {old['data']['num_classes']}); compare builds of the same model"
        )
    res = CheckResult()
    alike = _alike(new, old, res)
    new_t = {t["name"]: t for t in new["targets"]}
    for o in old["targets"]:
        name, n = o["name"], new_t.get(o["name"])
        if n is None:
            if only_common:
                res.skipped_targets.append(name)
            else:
                res.comparisons.append(_cmp(name, "present", False, "in the baseline but not in this build "
                                            "(check --only-common compares only the targets both builds have)"))
        elif n["status"] != "validated":
            res.comparisons.append(_cmp(name, "status", o["status"] != "validated",
                                        f"status {n['status']} (baseline {o['status']}): {n.get('reason') or ''}"))
        elif o["status"] != "validated":
            res.notes.append(f"{name}: {o['status']} in the baseline; nothing to compare against")
        else:
            res.comparisons += _compare_target(name, n, o, limits, alike)
    if res.skipped_targets:
        res.notes.append(f"not compared, not in this build: {', '.join(res.skipped_targets)}")
    added = sorted(set(new_t) - {t["name"] for t in old["targets"]})
    if added:
        res.notes.append(f"new, not in the baseline: {', '.join(added)}")
    return res


def judged(metrics: dict[str, Any]) -> tuple[str, float]:
    """The metric a target was judged by and its value; a manifest from before ``metric:`` has top-1 only."""
    name, value = metrics.get("metric") or "top1", metrics.get("value")
    return name, float(metrics["top1"] if value is None else value)


def _drop(name: str, check: str, old: float, new: float, limit: float, alike: Alike) -> Comparison:
    what = label(check)
    if alike.why_top1:
        return _cmp(name, check, True, f"not compared: {alike.why_top1} ({what} {old * 100:.2f}% -> "
                    f"{new * 100:.2f}%)", old=old, new=new, skipped=True)
    drop = (old - new) * 100
    return _cmp(name, check, drop <= limit + 1e-9, f"{what} {old * 100:.2f}% -> {new * 100:.2f}% ({-drop:+.2f} pt, "
                f"allowed -{limit} pt)", old=old, new=new, limit=limit)


def _compare_accuracy(name: str, nm: dict[str, Any], om: dict[str, Any], lim: RegressionConfig,
                      alike: Alike) -> list[Comparison]:
    """Top-1 always; the build's metric when it is another; retention and drift, which are of that metric."""
    out = [_drop(name, "top1", om["top1"], nm["top1"], lim.max_top1_drop_points, alike)]
    (metric, new), (old_metric, old) = judged(nm), judged(om)
    if metric != old_metric:
        why = (f"not compared: the baseline is judged by {label(old_metric)}, this build by {label(metric)} "
               "(metric: in the config)")
        return out + [_cmp(name, check, True, why, skipped=True) for check in ("retention", "drift")]
    if metric != "top1":
        limit = lim.max_top1_drop_points if lim.max_metric_drop_points is None else lim.max_metric_drop_points
        out.append(_drop(name, metric, old, new, limit, alike))
    return out + _compare_relative(name, nm, om, lim, "" if metric == "top1" else f"{label(metric)} ")


def _compare_relative(name: str, nm: dict[str, Any], om: dict[str, Any], lim: RegressionConfig,
                      what: str) -> list[Comparison]:
    out = []
    if nm.get("retention") is None or om.get("retention") is None:
        out.append(_cmp(name, "retention", True, f"{what}retention not recorded in "
                        f"{'either build' if nm.get('retention') is om.get('retention') else 'one build'}",
                        skipped=True))
    else:
        rdrop = om["retention"] - nm["retention"]
        out.append(_cmp(name, "retention", rdrop <= lim.max_retention_drop + 1e-12,
                        f"{what}retention {om['retention']:.4f} -> {nm['retention']:.4f} (allowed drop "
                        f"{lim.max_retention_drop})", old=om["retention"], new=nm["retention"],
                        limit=lim.max_retention_drop))
    dinc = abs(nm["drift_points"]) - abs(om["drift_points"])
    out.append(_cmp(name, "drift", dinc <= lim.max_drift_increase_points + 1e-9,
                    f"|{what}drift| vs {nm['reference']} {abs(om['drift_points']):.2f} -> "
                    f"{abs(nm['drift_points']):.2f} pt (allowed +{lim.max_drift_increase_points} pt)",
                    old=om["drift_points"], new=nm["drift_points"], limit=lim.max_drift_increase_points))
    return out


def _compare_target(name: str, n: dict[str, Any], o: dict[str, Any], lim: RegressionConfig,
                    alike: Alike) -> list[Comparison]:
    nm, om = n["metrics"], o["metrics"]
    out = _compare_accuracy(name, nm, om, lim, alike)
    growth = nm["size_bytes"] / om["size_bytes"] - 1
    out.append(_cmp(name, "size", growth <= lim.max_size_growth + 1e-12,
                    f"size {om['size_bytes']:,} -> {nm['size_bytes']:,} B ({growth:+.1%}, allowed +{lim.max_size_growth:.0%})",
                    old=om["size_bytes"], new=nm["size_bytes"], limit=lim.max_size_growth))
    return out + _compare_latency(name, nm.get("latency"), om.get("latency"), lim, alike)


def _latency_skip(nl: dict[str, Any] | None, ol: dict[str, Any] | None, alike: Alike) -> str | None:
    if not nl and not ol:
        return "latency not measured in either build"
    if not nl or not ol:
        return f"latency measured only in {'the baseline' if ol else 'this build'}"
    if nl.get("measured_on") != ol.get("measured_on"):
        return f"not compared: measured on '{ol.get('measured_on')}' in the baseline, '{nl.get('measured_on')}' here"
    if nl.get("measured_on") == "host" and not alike.machine:
        return "not compared: measured on different machines (see above)"
    if nl.get("measured_on") == "host" and alike.busy:
        return f"not compared: {alike.busy}"
    if nl.get("threads") != ol.get("threads") or nl.get("batch") != ol.get("batch"):
        return (f"not compared: batch {ol.get('batch')} / {ol.get('threads')} thread(s) in the baseline, "
                f"batch {nl.get('batch')} / {nl.get('threads')} here")
    return None


def _compare_latency(name: str, nl: dict[str, Any] | None, ol: dict[str, Any] | None, lim: RegressionConfig,
                     alike: Alike) -> list[Comparison]:
    why = _latency_skip(nl, ol, alike)
    if why or nl is None or ol is None:
        return [_cmp(name, "latency", True, why or "", skipped=True)]
    out = []
    for p in ("p50_ms", "p90_ms"):
        a, b = ol.get(p), nl.get(p)
        if not a or b is None:
            out.append(_cmp(name, f"latency_{p[:-3]}", True, f"{p[:-3]} not reported in "
                            f"{'the baseline' if not a else 'this build'}", skipped=True))
            continue
        g = b / a - 1
        out.append(_cmp(name, f"latency_{p[:-3]}", g <= lim.max_latency_growth,
                        f"{p[:-3]} latency {a:.4f} -> {b:.4f} ms ({g:+.1%}, allowed +{lim.max_latency_growth:.0%})",
                        old=a, new=b, limit=lim.max_latency_growth))
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
    if res.differences or res.notes:
        lines.append(f"  <system-out>{escape(chr(10).join(res.differences + res.notes))}</system-out>")
    lines.append("</testsuite></testsuites>")
    return "\n".join(lines) + "\n"


def to_markdown(res: CheckResult, new_name: str, old_name: str) -> str:
    head = "regressed" if res.failures else "no regression"
    lines = [f"### edgeforge check: {head}", "", f"`{new_name}` against baseline `{old_name}`", ""]
    lines += [f"> **{d}**" for d in res.differences] + ([""] if res.differences else [])
    lines += ["| target | check | result | detail |", "|---|---|---|---|"]
    for c in res.comparisons:
        verdict = "skipped" if c.skipped else ("pass" if c.passed else "**FAIL**")
        lines.append(f"| {c.target} | {c.check} | {verdict} | {c.message} |")
    for note in res.notes:
        lines.append(f"\n- {note}")
    return "\n".join(lines) + "\n"


def check(new_path: str | Path, baseline_path: str | Path, limits: RegressionConfig | None = None, *,
          only_common: bool = False) -> CheckResult:
    new = read_manifest(new_path, "new")
    old = read_manifest(baseline_path, "baseline")
    return compare(new, old, limits or RegressionConfig(), only_common=only_common)
