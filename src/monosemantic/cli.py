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
    results_p = sub.add_parser("results", help="keep a run's results in the DVC remote under a key, or restore "
                                               "them there instead of recomputing (the pull-request workflow's base)",
                               epilog="exit status: 0 done, 1 (fetch) the remote holds no results for KEY, 2 error")
    results_p.add_argument("action", choices=["store", "fetch"],
                           help="store: dvc push, then archive dvc.lock and the uncached outputs; fetch: the reverse")
    results_p.add_argument("key", help="a name for the run, e.g. tiny-<commit>")
    results_p.add_argument("--remote", help="a DVC remote's name (default: the default remote)")
    export_p = sub.add_parser("export", help="write a dictionary's features for Neuronpedia or EleutherAI delphi",
                              epilog="run in the workspace that made the dictionary; exit status 2 on bad input")
    formats = export_p.add_subparsers(dest="format", required=True)
    np_p = formats.add_parser("neuronpedia", help="feature JSON per feature + SAEDashboard batch files, "
                                                   "from the interpret stage's outputs")
    np_p.add_argument("--model-id", default="monosemantic-1l", help="Neuronpedia model id (default %(default)s)")
    np_p.add_argument("--layer", type=int, default=0, help="layer number in the source id <layer>-<dictionary>")
    np_p.add_argument("--all", action="store_true", help="also the features interpret did not sample (statistics only)")
    dl_p = formats.add_parser("delphi", help="delphi's latent cache: every activation of the latents over a token set")
    dl_p.add_argument("--split", default="train", help="the activation store's split to encode (default train)")
    dl_p.add_argument("--max-tokens", type=int, help="encode only the split's first N tokens (whole contexts)")
    dl_p.add_argument("--latents", help="comma-separated feature indices (default: all)")
    dl_p.add_argument("--n-splits", type=int, default=5, help="files the latents are split into (delphi's default 5)")
    dl_p.add_argument("--module", help="the module folder's name (default: the store's hook)")
    for p in (np_p, dl_p):
        p.add_argument("dictionary", help="a dictionary's name, <architecture>-<size> (models/sae/<name>)")
        p.add_argument("--out", required=True, help="an empty or new directory to write into")
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
    if args.command == "results":
        from monosemantic.errors import UserError
        from monosemantic.review import ReviewError, fetch_results, store_results

        try:
            if args.action == "store":
                n = store_results(args.key, args.remote)
                print(f"stored results {args.key!r}: outputs pushed; dvc.lock and {n - 1} other paths archived")
                return 0
            if not fetch_results(args.key, args.remote):
                print(f"monosemantic results: the remote holds no results {args.key!r}; nothing was changed",
                      file=sys.stderr)
                return 1
            print(f"restored results {args.key!r}: `dvc status` finds nothing to run")
            return 0
        except (ReviewError, UserError) as e:
            print(f"monosemantic results: error: {e}", file=sys.stderr)
            return 2
    if args.command == "export":
        from monosemantic.errors import UserError
        from monosemantic.interpret.export import export_delphi, export_neuronpedia

        try:
            if args.format == "neuronpedia":
                export_neuronpedia(".", args.dictionary, args.out, model_id=args.model_id, layer=args.layer,
                                   all_features=args.all)
            else:
                try:
                    latents = None if args.latents is None else [int(x) for x in args.latents.split(",") if x.strip()]
                except ValueError:
                    parser.error(f"--latents {args.latents!r}: give comma-separated feature indices, e.g. 0,5,17")
                export_delphi(".", args.dictionary, args.out, split=args.split, max_tokens=args.max_tokens,
                              latents=latents, n_splits=args.n_splits, module=args.module)
        except UserError as e:
            print(f"monosemantic export: error: {e}", file=sys.stderr)
            return 2
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
