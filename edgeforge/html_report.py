"""A self-contained HTML report (inline CSS and SVG, no scripts, no network) rendered from the manifest."""

from __future__ import annotations

import html
import math
from typing import Any

from .metrics import label as metric_label

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f", "#7c3aed", "#b45309"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#111;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:.5rem 0} th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left}
th{background:#f3f4f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#15803d;font-weight:600} .fail{color:#b91c1c;font-weight:600} .skip{color:#92400e}
.verdict{display:inline-block;padding:.2rem .7rem;border-radius:1rem;color:#fff;font-weight:700}
.plots{display:flex;flex-wrap:wrap;gap:1.5rem} figure{margin:0} figcaption{font-size:.8rem;color:#555;max-width:520px}
code{font-size:.8rem;background:#f3f4f6;padding:0 .2rem}
"""


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _e(v: Any) -> str:
    return html.escape(str(v))


def _axis_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]: about ``n`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        half = abs(lo) * 0.01 or 0.5
        lo, hi = lo - half, hi + half
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _tick_label(v: float, ticks: list[float]) -> str:
    """Enough decimals to tell neighbouring ticks apart and no more (0.995, not 0.9950000001)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{v:.{decimals}f}"


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks in log10 space at 1, 2, 5 x 10^k (or whole decades when the span is wide)."""
    mults = (1, 2, 5) if hi - lo < 2 else (1,)
    ticks = [math.log10(m) + k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mults]
    inside = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
    return inside if len(inside) >= 2 else [math.floor(lo), math.ceil(hi)]


def _point_label(label: str, x: float, y: float, bounds: tuple[float, float, float, float]) -> str:
    """A point's name beside it, flipped left or below when it would leave the plot area."""
    left, top, right, _ = bounds
    width = 6.0 * len(label)  # ~ width of a 10 px system-ui glyph
    anchor, tx = ("end", x - 8) if x + 8 + width > right and x - 8 - width >= left else ("start", x + 8)
    ty = y + 16 if y - 8 - 10 < top else y - 8
    return f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="10" text-anchor="{anchor}">{_e(label)}</text>'


def _scatter(points: list[tuple[str, float, float, str]], xlabel: str, ylabel: str, *, logx: bool = False,
             w: int = 520, h: int = 320) -> str:
    """points: (label, x, y, colour)."""
    if not points:
        return "<p>No data to plot.</p>"
    ml, mr, mt, mb = 60, 20, 20, 50
    xs = [math.log10(p[1]) if logx else p[1] for p in points]
    ys = [p[2] for p in points]
    padx = (max(xs) - min(xs)) * 0.1 or 0.5
    pady = (max(ys) - min(ys)) * 0.15 or 0.005
    xt = _log_ticks(min(xs) - padx, max(xs) + padx) if logx else _axis_ticks(min(xs) - padx, max(xs) + padx)
    yt = _axis_ticks(min(ys) - pady, max(ys) + pady)
    x0, x1 = min(xt[0], min(xs) - padx), max(xt[-1], max(xs) + padx)
    y0, y1 = yt[0], yt[-1]

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * (w - ml - mr)

    def sy(v: float) -> float:
        return h - mb - (v - y0) / (y1 - y0) * (h - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="{_e(ylabel)} vs {_e(xlabel)}">',
           f'<rect width="{w}" height="{h}" fill="#fff"/>',
           f'<line x1="{ml}" y1="{h - mb}" x2="{w - mr}" y2="{h - mb}" stroke="#333"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{h - mb}" stroke="#333"/>']
    for t in xt:
        label = (f"{10 ** t:,.0f}" if t >= 0 else f"{10 ** t:.2g}") if logx else _tick_label(t, xt)
        out.append(f'<text x="{sx(t):.1f}" y="{h - mb + 16}" font-size="10" text-anchor="middle">{label}</text>')
    for t in yt:
        out.append(f'<line x1="{ml}" y1="{sy(t):.1f}" x2="{w - mr}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 6}" y="{sy(t) + 3:.1f}" font-size="10" text-anchor="end">{_tick_label(t, yt)}</text>')
    out.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 10}" font-size="12" text-anchor="middle">{_e(xlabel)}</text>')
    out.append(f'<text x="14" y="{(mt + h - mb) / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {(mt + h - mb) / 2})">{_e(ylabel)}</text>')
    labelled = len(points) <= 6  # beyond that, names overlap: the legend below and tooltips name them
    for (label, _, y, colour), x in zip(points, xs, strict=True):
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="6" fill="{colour}" fill-opacity=".8"><title>{_e(label)}</title></circle>')
        if labelled:
            out.append(_point_label(label, sx(x), sy(y), (0, 0, w, h)))
    out.append("</svg>")
    return "".join(out)


def _latency_boxes(rows: list[tuple[str, list[float], str]], w: int = 1040) -> str:
    """One horizontal box plot (p1-p99 whiskers, p25-p75 box, median) per target, shared ms axis."""
    rows = [r for r in rows if r[1]]
    if not rows:
        return "<p>No latency was measured on this host.</p>"
    ml, mr, row_h = 200, 30, 34
    h = 40 + row_h * len(rows)
    allv = sorted(v for _, s, _ in rows for v in s)
    ticks = _axis_ticks(0.0, allv[min(len(allv) - 1, int(len(allv) * 0.995))] * 1.05 or 1e-3)
    hi = ticks[-1]

    def sx(v: float) -> float:
        return ml + min(v, hi) / hi * (w - ml - mr)

    def pct(s: list[float], q: float) -> float:
        s = sorted(s)
        return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="latency distributions">',
           f'<rect width="{w}" height="{h}" fill="#fff"/>']
    for t in ticks:
        out.append(f'<line x1="{sx(t):.1f}" y1="10" x2="{sx(t):.1f}" y2="{h - 25}" stroke="#eee"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{h - 10}" font-size="10" text-anchor="middle">{_tick_label(t, ticks)} ms</text>')
    for i, (label, s, colour) in enumerate(rows):
        y = 20 + i * row_h + row_h / 2
        p1, p25, p50, p75, p99 = (pct(s, q) for q in (1, 25, 50, 75, 99))
        out.append(f'<text x="{ml - 8}" y="{y + 4}" font-size="11" text-anchor="end">{_e(label)}</text>')
        out.append(f'<line x1="{sx(p1):.1f}" y1="{y}" x2="{sx(p99):.1f}" y2="{y}" stroke="{colour}"/>')
        out.append(f'<rect x="{sx(p25):.1f}" y="{y - 9}" width="{max(1.0, sx(p75) - sx(p25)):.1f}" height="18" '
                   f'fill="{colour}" fill-opacity=".25" stroke="{colour}"/>')
        out.append(f'<line x1="{sx(p50):.1f}" y1="{y - 9}" x2="{sx(p50):.1f}" y2="{y + 9}" stroke="{colour}" stroke-width="2.5">'
                   f'<title>{_e(label)}: p50 {p50:.4f} ms, p99 {p99:.4f} ms</title></line>')
    out.append("</svg>")
    return "".join(out)


def _per_class_bars(names: list[str], series: list[tuple[str, list[float], str]], w: int = 1040, h: int = 280) -> str:
    """Grouped bars: per-class top-1 change (points) of each artifact vs the teacher."""
    if not series or not names:
        return "<p>No validated artifacts.</p>"
    ml, mr, mt, mb = 50, 20, 20, 60
    vals = [v for _, s, _ in series for v in s if not math.isnan(v)]
    ticks = _axis_ticks(0.0, max(1.0, max((abs(v) for v in vals), default=1.0)), n=3)
    m = ticks[-1]

    def sy(v: float) -> float:
        return mt + (m - v) / (2 * m) * (h - mt - mb)

    group_w = (w - ml - mr) / len(names)
    bar_w = max(2.0, group_w * 0.8 / len(series))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" aria-label="per-class accuracy change">',
           f'<rect width="{w}" height="{h}" fill="#fff"/>']
    for t in sorted({-v for v in ticks} | set(ticks)):
        out.append(f'<line x1="{ml}" y1="{sy(t):.1f}" x2="{w - mr}" y2="{sy(t):.1f}" stroke="{"#333" if t == 0 else "#eee"}"/>')
        out.append(f'<text x="{ml - 6}" y="{sy(t) + 3:.1f}" font-size="10" text-anchor="end">'
                   f'{"0" if t == 0 else "+" * (t > 0) + _tick_label(t, ticks)}</text>')
    for ci, cname in enumerate(names):
        gx = ml + ci * group_w + group_w * 0.1
        out.append(f'<text x="{ml + (ci + 0.5) * group_w:.1f}" y="{h - mb + 16}" font-size="10" text-anchor="middle">{_e(cname)}</text>')
        for si, (label, s, colour) in enumerate(series):
            v = s[ci] if ci < len(s) and not math.isnan(s[ci]) else 0.0
            y0, y1 = sorted((sy(0), sy(v)))
            out.append(f'<rect x="{gx + si * bar_w:.1f}" y="{y0:.1f}" width="{bar_w * 0.9:.1f}" height="{max(0.5, y1 - y0):.1f}" '
                       f'fill="{colour}"><title>{_e(label)}, class {_e(cname)}: {v:+.2f} pt</title></rect>')
    out.append("</svg>")
    return "".join(out)


def colours(n: int) -> list[str]:
    """n distinguishable colours: the palette first, then golden-angle hues."""
    if n <= len(PALETTE):
        return PALETTE[:n]
    return [f"hsl({(i * 137.508) % 360:.0f},70%,{42 + 10 * (i % 2)}%)" for i in range(n)]


def legend(items: list[tuple[str, str]]) -> str:
    return ("<div style='display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.8rem;margin:.4rem 0'>"
            + "".join(f"<span><span style='display:inline-block;width:.8rem;height:.8rem;background:{c};"
                      f"margin-right:.3rem;vertical-align:middle'></span>{_e(n)}</span>" for n, c in items)
            + "</div>")


def _ret(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _named(rec: dict[str, Any]) -> str:
    """The cell of the build's metric when it is not top-1 ('' for top-1, whose column is always there)."""
    if (rec.get("metric") or "top1") == "top1":
        return ""
    return f"<td class=num>{'-' if rec.get('value') is None else format(rec['value'], '.4f')}</td>"


def _named_head(metric: str, what: str = "") -> str:
    """'' for top-1; else the metric's label (with ``what`` after it)."""
    return "" if metric == "top1" else f"{metric_label(metric)}{what}"


def _lsb(mt: dict[str, Any]) -> str:
    from .report import logit_lsb_text

    text = logit_lsb_text(mt)
    return f"<br><span class=skip>logits {_e(text)}</span>" if text else ""


def _target_row(t: dict[str, Any], metric: str = "top1") -> str:
    mt = t.get("metrics")
    checks = t.get("checks", [])
    gate_ok = bool(checks) and all(c["passed"] for c in checks)
    gate = f"<span class='{'pass' if gate_ok else 'fail'}'>{'pass' if gate_ok else 'FAIL'}</span>"
    head = f"<tr><td>{_e(t['name'])}</td><td>{_e(t['format'])}</td><td>{_e(t['precision'])}</td>"
    if not mt:
        return (f"{head}<td class=fail>{_e(t['status'])}: {_e(t.get('reason') or '')}</td>"
                f"<td colspan={6 + (metric != 'top1')}></td>"
                f"<td>{gate}</td></tr>")
    lat = mt.get("latency")
    lat_s = (f"{_ms(lat['p50_ms'])} / {_ms(lat['p90_ms'])} / {_ms(lat['p99_ms'])} ms ({_e(lat['measured_on'])})" if lat
             else f"<span class=skip>{_e(mt.get('latency_note') or 'not measured')}</span>")
    return (f"{head}<td>{_e(t['status'])}</td><td>{_e(t.get('executor') or '')}</td>"
            f"<td class=num>{mt['top1'] * 100:.2f}%</td>{_named(mt)}<td class=num>{_ret(mt.get('retention'))}</td>"
            f"<td class=num>{mt['drift_points']:+.2f} pt vs {_e(mt['reference'])}{_lsb(mt)}</td>"
            f"<td class=num>{mt['size_bytes'] / 1024:.1f} KiB ({mt['compression_vs_teacher']:.0f}x)</td>"
            f"<td>{lat_s}</td><td>{gate}</td></tr>")


def _pipeline_table(models: dict[str, Any], st: dict[str, Any], named_th: str) -> str:
    """Teacher, float student and QAT simulation on the test split, with the stage that made each."""
    t, f, q = models["teacher"], models["float_student"], models["qat_simulation"]
    return "\n".join([
        f"<h2>Pipeline</h2><table><tr><th>model</th><th>top-1 (test)</th>{named_th}<th>parameters</th><th>stage</th>"
        "<th>seconds</th></tr>",
        f"<tr><td>teacher</td><td class=num>{t['top1'] * 100:.2f}%</td>{_named(t)}"
        f"<td class=num>{t['parameters']:,}</td><td>-</td><td>-</td></tr>",
        f"<tr><td>float student</td><td class=num>{f['top1'] * 100:.2f}%</td>{_named(f)}"
        f"<td class=num>{f['parameters']:,}</td><td>distill (best epoch {st['distill']['best_epoch']}"
        f"{', cached' if st['distill']['cached'] else ''})</td><td class=num>{st['distill']['seconds']:.1f}</td></tr>",
        f"<tr><td>QAT simulation (int8)</td><td class=num>{q['top1'] * 100:.2f}%</td>{_named(q)}<td>-</td>"
        f"<td>qat (best epoch {st['qat']['best_epoch']}{', cached' if st['qat']['cached'] else ''})</td>"
        f"<td class=num>{st['qat']['seconds']:.1f}</td></tr></table>"])


def render_html(m: dict[str, Any]) -> str:
    ok = m["exit_code"] == 0
    verdict = "PASS" if ok else ("FAIL (gate)" if m["exit_code"] == 2 else "FAIL (error)")
    models, targets = m["models"], m["targets"]
    metric = models["teacher"].get("metric") or "top1"
    named_th = f"<th>{_e(_named_head(metric, ' (test)'))}</th>" if metric != "top1" else ""
    palette = dict(zip([t["name"] for t in targets], colours(len(targets)), strict=True))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>edgeforge: {_e(m['name'])}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>edgeforge build: {_e(m['name'])} <span class='verdict' style='background:{'#15803d' if ok else '#b91c1c'}'>{verdict}</span></h1>",
             f"<p>Built {_e(m['created'])} on {_e(m['host']['platform'])} ({_e(m['host']['cpus'])} CPUs).</p>",
             _pipeline_table(models, m["stages"], named_th)]
    parts.append("<h2>Targets</h2><table><tr><th>target</th><th>format</th><th>precision</th><th>status</th><th>executor</th>"
                 f"<th>top-1</th>{named_th.replace(' (test)', '')}<th>{_e(_named_head(metric, ' '))}retention</th>"
                 f"<th>{_e(_named_head(metric, ' '))}drift</th><th>size</th><th>latency p50 / p90 / p99</th><th>gate</th></tr>")
    parts += [_target_row(t, metric) for t in targets]
    parts.append("</table>")
    parts += [f"<p class=skip>Warning: {_e(s['message'])}.</p>" for s in m.get("int8_slower") or []]
    failures = m["gate"]["errors"] + m["gate"]["failures"]
    if failures:
        parts.append("<ul>" + "".join(f"<li class=fail>{_e(f)}</li>" for f in failures) + "</ul>")
    valid = [t for t in targets if t.get("metrics")]
    rated = [t for t in valid if t["metrics"].get("retention") is not None]
    size_pts = [(t["name"], t["metrics"]["size_bytes"] / 1024, t["metrics"]["retention"], palette[t["name"]]) for t in rated]
    lat_pts = [(t["name"], t["metrics"]["latency"]["p50_ms"], t["metrics"]["retention"], palette[t["name"]])
               for t in rated if (t["metrics"].get("latency") or {}).get("p50_ms") is not None]
    parts.append("<h2>Trade-offs</h2><div class=plots>")
    ret_axis = f"{_named_head(metric, ' ')}retention vs teacher"
    parts.append(f"<figure>{_scatter(size_pts, 'artifact size (KiB, log scale)', ret_axis, logx=True)}"
                 "<figcaption>Retention against size: up and to the left is better.</figcaption></figure>")
    parts.append(f"<figure>{_scatter(lat_pts, 'p50 latency (ms, host)', ret_axis)}"
                 "<figcaption>Retention against batch-1 latency where it was measured (host latency is not the device's).</figcaption></figure>")
    parts.append("</div>" + legend([(t["name"], palette[t["name"]]) for t in valid]))
    parts.append("<h2>Latency distributions</h2>")
    parts.append(_latency_boxes([(t["name"], (t["metrics"].get("latency") or {}).get("samples_ms", []), palette[t["name"]])
                                 for t in valid]))
    parts.append("<p style='font-size:.8rem;color:#555'>Whiskers p1-p99, box p25-p75, bar the median; batch 1 after warm-up.</p>")
    teacher_pc = models["teacher"]["per_class_top1"]
    series = [(t["name"], [(a - b) * 100 if a is not None and b is not None else math.nan
                         for a, b in zip(t["metrics"]["per_class_top1"], teacher_pc, strict=True)],
               palette[t["name"]]) for t in valid]
    parts.append("<h2>Per-class top-1 change vs the teacher (points)</h2>")
    parts.append(_per_class_bars(m["data"]["class_names"], series))
    parts.append(legend([(name, colour) for name, _, colour in series]))
    parts.append("<h2>Reproducibility</h2><table><tr><th>item</th><th>value</th></tr>")
    rows = [("config sha256", m["config"]["sha256"]), ("data sha256", m["data"]["sha256"]),
            ("seeds", f"distill {m['seed']['distill']}, QAT {m['seed']['qat']}")]
    rows += [(f"version: {k}", v) for k, v in m["versions"].items()]
    rows += [(f"artifact: {t['artifact']['path']}", t["artifact"]["sha256"]) for t in targets if t.get("artifact")]
    parts += [f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in rows]
    parts.append("</table></body></html>")
    return "\n".join(parts)
