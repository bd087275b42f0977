"""The command line: parse, call the library, map the outcome to an exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

from . import __version__
from .errors import EdgeforgeError, format_error
from .schema import load_yaml_text


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgeforgeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set gate.min_retention=0.995")
        out[key] = load_yaml_text(value, f"--set {key}")
    return out


def _cmd_build(args: argparse.Namespace) -> int:
    from .pipeline import build

    result = build(args.config, overrides=_parse_set(args.set), targets=args.target or None,
                   all_targets=args.all_targets)
    return result.exit_code


def _cmd_preflight(args: argparse.Namespace) -> int:
    from .pipeline import preflight

    results = preflight(args.config, overrides=_parse_set(args.set), targets=args.target or None,
                        all_targets=args.all_targets)
    print(f"preflight: {len(results)} target(s) can take the student")
    return 0


_LIMIT_FLAGS = {
    "max_top1_drop": "max_top1_drop_points",
    "max_metric_drop": "max_metric_drop_points",
    "max_retention_drop": "max_retention_drop",
    "max_drift_increase": "max_drift_increase_points",
    "max_latency_growth": "max_latency_growth",
    "max_size_growth": "max_size_growth",
}


def _writable_file(flag: str, value: str | None) -> None:
    from pathlib import Path

    if value is None:
        return
    p = Path(value)
    if p.is_dir():
        raise EdgeforgeError(f"{flag} {value}: is a folder; give a file path, e.g. {p / 'edgeforge-check.xml'}")
    if not p.parent.is_dir():
        raise EdgeforgeError(f"{flag} {value}: the folder {p.parent} does not exist; create it first")


def _cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .cache import atomic_write_text
    from .config import RegressionConfig, load_config
    from .regression import check, to_junit, to_markdown

    _writable_file("--junit", args.junit)
    _writable_file("--markdown", args.markdown)
    base = load_config(args.config).config.regression if args.config else RegressionConfig()
    given = {field: getattr(args, flag) for flag, field in _LIMIT_FLAGS.items() if getattr(args, flag) is not None}
    limits = base.model_copy(update=given)
    result = check(args.manifest, args.baseline, limits, only_common=args.only_common)
    for d in result.differences:
        print(f"differs: {d}")
    for c in result.comparisons:
        mark = "skip" if c.skipped else ("ok  " if c.passed else "FAIL")
        print(f"{mark} {c.target}: {c.check}: {c.message}")
    for note in result.notes:
        print(f"note {note}")
    if args.junit:
        atomic_write_text(Path(args.junit), to_junit(result))
    if args.markdown:
        atomic_write_text(Path(args.markdown), to_markdown(result, args.manifest, args.baseline))
    n = len(result.failures)
    why = " (the builds differ, see 'differs:' above)" if n and result.differences else ""
    print(f"edgeforge check: {'regression in ' + str(n) + ' check(s)' + why if n else 'no regression'}",
          file=sys.stderr)
    return result.exit_code


def _gate_text(g: Any) -> str:
    parts = [f"retention>={g.min_retention}" if g.min_retention is not None else "",
             f"|drift|<={g.max_drift_points}pt" if g.max_drift_points is not None else "",
             f"agreement>={g.min_agreement}" if g.min_agreement is not None else "",
             f"p90<={g.max_latency_p90_ms}ms" if g.max_latency_p90_ms is not None else "",
             f"size<={g.max_size_kb}KiB" if g.max_size_kb is not None else ""]
    return ", ".join(x for x in parts if x) or "-"


def _cmd_schema(args: argparse.Namespace) -> int:
    import json

    from .records import manifest_json_schema

    print(json.dumps(manifest_json_schema(), indent=2))
    return 0


def _cmd_debug(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .cache import atomic_write_text
    from .debug import debug_build

    _writable_file("--json", args.json)
    report = debug_build(args.build_dir, args.target, inputs=args.inputs, samples=args.samples, config=args.config)
    print(report.to_text())
    if args.json:
        atomic_write_text(Path(args.json), report.to_json() + "\n")
    return 2 if report.first_divergent else 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .gate_spec import DEFAULT_GATE
    from .targets import available, load_profile

    rows = []
    for name, path in available([Path(d) for d in args.dir]).items():
        try:
            p = load_profile(path)
        except EdgeforgeError as exc:  # one bad profile must not hide the others
            rows.append((name, "INVALID", "-", "-", "-", "-", "-", "-", str(exc)[:100], "-"))
            continue
        rows.append((name, p.format, p.precision, f"{p.input.layout}/{p.input.dtype}/b{p.input.batch}",
                     str(p.runtime.threads), p.runtime.compute_units or "-", p.device.minimum_os or "-",
                     p.latency.measured_on, _gate_text(p.gate.over(DEFAULT_GATE)), p.device.name))
    head = ("name", "format", "precision", "input", "threads", "units", "min os", "latency", "gate", "device")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1, the error code: 2 means a gate failed, and CI must not read a typo as a regression."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _config_arg(value: str) -> str:
    """A config file, or a folder holding exactly one edgeforge.yaml."""
    from pathlib import Path

    p = Path(value)
    if not p.is_dir():
        return value
    if (p / "edgeforge.yaml").is_file():
        return str(p / "edgeforge.yaml")
    found = sorted(x.name for x in p.glob("*.y*ml"))
    hint = f"; YAML files there: {', '.join(found[:5])}" if found else ""
    raise argparse.ArgumentTypeError(f"{value} is a folder without an edgeforge.yaml{hint}; pass the config file")


CONFIG_HELP = "the build's edgeforge.yaml (or the folder that holds it)"


class Terminated(BaseException):
    """SIGTERM: a BaseException like KeyboardInterrupt, so library code's ``except Exception`` lets it through."""


@contextlib.contextmanager
def _signals_stop_the_build() -> Iterator[list[int]]:
    """SIGTERM unwinds like Ctrl-C (finally blocks release the lock and temp files); either ends with one line.

    The list records the signals seen: a KeyboardInterrupt swallowed by third-party code (an
    exporter's broad except) still ends the run as interrupted instead of carrying on to exit 0.
    """
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stopped_by(received: list[int]) -> int:
    if signal.SIGTERM in received:
        print("edgeforge: terminated (SIGTERM); finished stages are cached, run again to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    print("edgeforge: interrupted", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="edgeforge", description="Distil, quantize, export and gate models for edge targets.")
    ap.add_argument("--version", action="version", version=f"edgeforge {__version__}")
    ap.add_argument("--verbose", action="store_true", help="show the traceback of an unexpected error "
                    "(also EDGEFORGE_VERBOSE=1)")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run the pipeline for a config; exit 0 pass, 2 gate failed, 1 error")
    b.add_argument("config", type=_config_arg, help=CONFIG_HELP)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted)")
    b.add_argument("--target", action="append", metavar="NAME", help="build only these targets (repeatable)")
    b.add_argument("--all-targets", action="store_true", help="build every target profile found")
    b.set_defaults(func=_cmd_build)
    p = sub.add_parser("preflight", help="export the untrained student for every target, before any training")
    p.add_argument("config", type=_config_arg, help=CONFIG_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--target", action="append", metavar="NAME")
    p.add_argument("--all-targets", action="store_true")
    p.set_defaults(func=_cmd_preflight)
    c = sub.add_parser("check", help="compare a build's manifest with a baseline; exit 0 ok, 2 regression, 1 error")
    c.add_argument("manifest", help="manifest.json of the new build")
    c.add_argument("--baseline", required=True, help="manifest.json of the release to compare against")
    c.add_argument("--only-common", action="store_true", help="compare only the targets both builds have "
                   "(the baseline's others are listed as skipped, not failed)")
    c.add_argument("--config", help="take the allowed deltas from this config's regression: section")
    c.add_argument("--max-top1-drop", type=float, help="allowed top-1 drop in points (default 0.3)")
    c.add_argument("--max-metric-drop", type=float, help="allowed drop of the build's metric in points when it is "
                   "not top1 (default: the top-1 limit)")
    c.add_argument("--max-retention-drop", type=float, help="allowed retention drop (default 0.003)")
    c.add_argument("--max-drift-increase", type=float, help="allowed |drift| increase in points (default 0.5)")
    c.add_argument("--max-latency-growth", type=float, help="allowed relative p50/p90 growth (default 0.10)")
    c.add_argument("--max-size-growth", type=float, help="allowed relative size growth (default 0.05)")
    c.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per target and check)")
    c.add_argument("--markdown", metavar="FILE", help="write a short Markdown summary for a pull-request comment")
    c.set_defaults(func=_cmd_check)
    d = sub.add_parser("debug", help="layer report: each quantized node of the carrier vs an int8 artifact's "
                       "tensor; exit 0 none diverges, 2 one does, 1 error")
    d.add_argument("build_dir", help="a build's output folder (holds manifest.json and student_qat.pt2)")
    d.add_argument("--target", required=True, help="the int8 target to examine (onnx or tflite)")
    d.add_argument("--samples", type=int, default=32, help="how many test inputs (default 32)")
    d.add_argument("--inputs", metavar="NPZ", help="take the inputs from this .npz's 'x' array instead of the test split")
    d.add_argument("--config", help="the build's edgeforge.yaml when it moved from where the manifest says")
    d.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    d.set_defaults(func=_cmd_debug)
    t = sub.add_parser("targets", help="list the target profiles found")
    t.add_argument("--dir", action="append", default=[], help="an extra folder of profiles")
    t.set_defaults(func=_cmd_targets)
    sc = sub.add_parser("schema", help="print the JSON Schema of a file edgeforge writes")
    sc.add_argument("what", choices=["manifest"])
    sc.set_defaults(func=_cmd_schema)
    args = ap.parse_args(argv)
    if args.command in ("build", "preflight"):
        from .quiet import quiet_third_party

        quiet_third_party()
    verbose = args.verbose or os.environ.get("EDGEFORGE_VERBOSE") == "1"
    with _signals_stop_the_build() as received:
        try:
            code = int(args.func(args))
        except (KeyboardInterrupt, Terminated):
            code = 130
        except Exception as exc:
            code = 1
            if not received:  # a stop that third-party code turned into an error is reported as the stop
                _report(exc, verbose)
        return _stopped_by(received) if received or code == 130 else code


def _report(exc: Exception, verbose: bool) -> None:
    if isinstance(exc, EdgeforgeError):
        print(format_error(exc), file=sys.stderr)
        return
    # not raised on purpose: a bug, or a third-party failure we did not map
    if verbose:
        traceback.print_exc()
    print(format_error(exc) + ("" if verbose else " (run with --verbose for the traceback)"), file=sys.stderr)

if __name__ == "__main__":
    sys.exit(main())
