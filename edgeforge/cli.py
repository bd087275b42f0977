"""The command line: parse, call the library, map the outcome to an exit code."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from . import __version__
from .errors import EdgeforgeError


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgeforgeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set gate.min_retention=0.995")
        out[key] = yaml.safe_load(value)
    return out


def _cmd_build(args: argparse.Namespace) -> int:
    from .pipeline import build

    result = build(args.config, overrides=_parse_set(args.set), targets=args.target or None)
    return result.exit_code


def _cmd_targets(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .targets import available, load_profile

    rows = []
    for name, path in available([Path(d) for d in args.dir]).items():
        p = load_profile(path)
        rows.append((name, p.format, p.precision, p.input.layout, str(p.runtime.threads), p.device.name))
    head = ("name", "format", "precision", "layout", "threads", "device")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgeforge", description="Distil, quantize, export and gate models for edge targets.")
    ap.add_argument("--version", action="version", version=f"edgeforge {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run the pipeline for a config; exit 0 pass, 2 gate failed, 1 error")
    b.add_argument("config")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted)")
    b.add_argument("--target", action="append", metavar="NAME", help="build only these targets (repeatable)")
    b.set_defaults(func=_cmd_build)
    t = sub.add_parser("targets", help="list the target profiles found")
    t.add_argument("--dir", action="append", default=[], help="an extra folder of profiles")
    t.set_defaults(func=_cmd_targets)
    args = ap.parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeforgeError as exc:
        print(f"edgeforge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgeforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
