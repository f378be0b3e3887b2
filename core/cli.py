"""``python -m core``: the headless command line tool.

Subcommands print what they do and fail with one sentence and exit status 2 on a user error.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import Pixel3DMMError


def _cmd_assets(args: argparse.Namespace) -> int:
    from .assets import AssetRegistry

    report = AssetRegistry().report()
    print(report.format())
    if report.complete:
        print("All assets found.")
        return 0
    print("Some assets are missing or invalid: real reconstructions need all four (see above).")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("assets", help="report where the FLAME model, UV template and checkpoints are")
    p.set_defaults(func=_cmd_assets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except Pixel3DMMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
