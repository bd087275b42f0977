"""The human report (Markdown) rendered from the manifest alone."""

from __future__ import annotations

from typing import Any

from .metrics import label


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def _named(rec: dict[str, Any]) -> str:
    """The cell of the build's metric when it is not top-1 ('' for top-1, whose column is always there)."""
    if (rec.get("metric") or "top1") == "top1":
        return ""
    return f" {'-' if rec.get('value') is None else format(rec['value'], '.4f')} |"


def _heads(metric: str) -> tuple[str, str, str]:
    """(extra column, retention header, drift header) of a build judged by ``metric``."""
    if metric == "top1":
        return "", "retention", "drift (pt)"
    name = label(metric)
    return f" {name} |", f"{name} retention", f"{name} drift (pt)"


def _model_rows(models: dict[str, Any], extra: str) -> list[str]:
    t, f, q = models["teacher"], models["float_student"], models["qat_simulation"]
    return [f"| model | top-1 |{extra} parameters | bytes |", "|---|---|" + "---|" * bool(extra) + "---|---|",
            f"| teacher | {_pct(t['top1'])} |{_named(t)} {t['parameters']:,} | {t['bytes']:,} |",
            f"| float student | {_pct(f['top1'])} |{_named(f)} {f['parameters']:,} | - |",
            f"| QAT simulation (int8) | {_pct(q['top1'])} |{_named(q)} - | - |"]


def logit_lsb_text(mt: dict[str, Any]) -> str:
    """The logit difference in output LSBs, 'n/a' for a float output, '' for a record from before the metric."""
    if mt.get("logit_lsb_p99") is not None:
        return f"p99 {mt['logit_lsb_p99']:.3g} / max {mt['logit_lsb_max']:.3g} LSB"
    return "LSB n/a (float output)" if mt.get("logit_lsb_note") else ""


def _target_row(t: dict[str, Any], metric: str) -> str:
    mt = t.get("metrics")
    gate = "pass" if t["checks"] and all(c["passed"] for c in t["checks"]) else "FAIL"
    if mt is None:
        return (f"| {t['name']} | {t['format']} | {t['precision']} | {t['status']}: {t.get('reason') or ''} "
                f"|{' - |' * (metric != 'top1')} - | - | - | - | - | - | - | - | FAIL |")
    lat = mt.get("latency")
    lat_s = (f"{_ms(lat['p50_ms'])} / {_ms(lat['p90_ms'])} / {_ms(lat['p99_ms'])} ({lat['measured_on']})" if lat
             else mt.get("latency_note") or "-")
    retention = "-" if mt["retention"] is None else f"{mt['retention']:.4f}"
    return (f"| {t['name']} | {t['format']} | {t['precision']} | {t['status']} | {_pct(mt['top1'])} |{_named(mt)} "
            f"{retention} | {mt['drift_points']:+.2f} vs {mt['reference']} | {mt['agreement'] * 100:.2f}% | "
            f"{mt['max_abs_diff']:.2e}{f' ({lsb})' if (lsb := logit_lsb_text(mt)) else ''} | {_kib(mt['size_bytes'])} | {mt['compression_vs_teacher']:.1f}x | {lat_s} | {gate} |")


def _int8_speed_lines(m: dict[str, Any]) -> list[str]:
    """One warning per int8 artifact slower than its fp32 partner on the build host."""
    return ["", *[f"**Warning:** {s['message']}." for s in m.get("int8_slower") or []]] if m.get("int8_slower") else []


def _fallback_lines(fb: dict[str, Any] | None) -> list[str]:
    """qat.fallback: the budget, the ranking of the layers and the ones kept float."""
    if not fb:
        return []
    lines = ["", "## Float fallback (qat.fallback)", "",
             f"QAT simulation {fb['drop_points']:.2f} pt below the float student on the validation split "
             f"(budget {fb['max_drop_points']:g} pt, {fb['metric']})."]
    if not fb["needed"]:
        return [*lines, "Within the budget: every layer stays int8."]
    lines += [f"Kept float: **{', '.join(fb['kept'])}**; QAT again: {fb['final_drop_points']:.2f} pt below float.", "",
              "| rank | layer | drop with only this layer float (pt) | logit error on the worst samples | kept |",
              "|---|---|---|---|---|"]
    lines += [f"| {i} | {r['module']} | {r['drop_points']:.2f} | {r['error']:.4g} | {'yes' if r['module'] in fb['kept'] else ''} |"
              for i, r in enumerate(fb["ranking"], 1)]
    return lines


def render_report(m: dict[str, Any]) -> str:
    models, metric = m["models"], m["models"]["teacher"].get("metric") or "top1"
    extra, retention, drift = _heads(metric)
    verdict = "PASS" if m["exit_code"] == 0 else ("FAIL (gate)" if m["exit_code"] == 2 else "FAIL (error)")
    lines = [
        f"# edgeforge build: {m['name']} — {verdict}",
        "",
        f"Built {m['created']} on {m['host']['platform']} ({m['host']['cpus']} CPUs); "
        f"edgeforge {m['versions'].get('edgeforge', '?')}, torch {m['versions'].get('torch', '?')}.",
        "",
        "## Models (test split, PyTorch)",
        "",
        *_model_rows(models, extra),
        "",
        "## Targets",
        "",
        f"| target | format | precision | status | top-1 |{extra} {retention} | {drift} | agreement | max abs diff | size | compression | p50 / p90 / p99 ms | gate |",
        "|---|---|---|---|---|" + "---|" * bool(extra) + "---|---|---|---|---|---|---|---|",
    ]
    lines += [_target_row(t, metric) for t in m["targets"]]
    lines += _int8_speed_lines(m)
    lines += ["", "## Gate", ""]
    if m["gate"]["passed"]:
        lines.append("All checks passed.")
    for e in m["gate"]["errors"]:
        lines.append(f"- error: {e}")
    for f in m["gate"]["failures"]:
        lines.append(f"- failed: {f}")
    lines += ["", "### Checks", "", "| target | check | value | limit | result |", "|---|---|---|---|---|"]
    for t in m["targets"]:
        for c in t["checks"]:
            val = f"{c['value']:.4g}" if isinstance(c["value"], float) else str(c["value"])
            lim = f"{c['limit']:.4g}" if isinstance(c["limit"], float) else str(c["limit"])
            verdict = "not checked" if c.get("skipped") else ("pass" if c["passed"] else "FAIL")
            lines.append(f"| {t['name']} | {c['name']} | {val} | {lim} | {verdict} |")
    st = m["stages"]
    lines += [
        "",
        "## Stages",
        "",
        "| stage | best epoch | val top-1 | seconds | samples/s | cached |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("distill", "qat"):
        s = st[name]
        lines.append(f"| {name} | {s['best_epoch']} | {_pct(s['best_val_top1'])} | {s['seconds']:.1f} | "
                     f"{s['samples_per_second']:.0f} | {s['cached']} |")
    lines += _fallback_lines(m.get("fallback"))
    lines += ["", "## Reproducibility", "",
              f"- config sha256: `{m['config']['sha256']}`",
              f"- data sha256: `{m['data']['sha256']}`",
              f"- seeds: distill {m['seed']['distill']}, QAT {m['seed']['qat']}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              ""]
    for t in m["targets"]:
        if t.get("artifact"):
            lines.append(f"- `{t['artifact']['path']}` sha256 `{t['artifact']['sha256']}`")
    return "\n".join(lines) + "\n"
