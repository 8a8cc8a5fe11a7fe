"""The `monosemantic` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monosemantic", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    audit_p = sub.add_parser("audit", help="show and verify which data produced an artifact",
                             epilog="exit status: 0 verified, 1 failed, 3 unverifiable (no check failed but some "
                                    "could not be made), 2 the audit could not run (the message says why)")
    audit_p.add_argument("path", help="a dictionary (models/sae/<architecture>-<size>), the activation store, the model, "
                                      "the tokens, the tokenizer or the corpus")
    audit_p.add_argument("--json", action="store_true", help="machine-readable output")
    diff_p = sub.add_parser("diff", help="params and metrics of the workspace against a git revision, "
                                         "as markdown for a pull request")
    diff_p.add_argument("rev", nargs="?", default="HEAD", help="git revision to compare with (default HEAD)")
    diff_p.add_argument("--all", action="store_true", help="also list unchanged params and metrics")
    diff_p.add_argument("--targets", nargs="+", metavar="PATH",
                        help="metrics files or directories to compare (default: all in dvc.yaml)")
    args = parser.parse_args(argv)

    if args.command == "audit":
        from pathlib import Path

        from monosemantic.audit import EXIT_CODES, audit, render
        from monosemantic.errors import UserError

        if not Path(args.path).exists():
            parser.error(f"{args.path} does not exist")
        try:
            report = audit(args.path)
        except UserError as e:
            print(f"monosemantic audit: error: {e}", file=sys.stderr)
            return 2
        print(report.to_json() if args.json else render(report))
        return EXIT_CODES[report.verdict]
    if args.command == "diff":
        from monosemantic.review import ReviewError, diff_markdown

        try:
            print(diff_markdown(args.rev, show_all=args.all, targets=args.targets), end="")
        except ReviewError as e:
            print(f"monosemantic diff: error: {e}", file=sys.stderr)
            return 2
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
