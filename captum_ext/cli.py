"""The ``captum-ext`` command line: ``captum-ext <command> [options]``.

Commands:

* ``demo`` -- the end-to-end demo of :mod:`captum_ext.demo` (train a CNN on offline BlockMNIST,
  seven attribution methods, CASO against CAFO, pixel perturbation and DiffROAR for every method,
  figures and a Markdown report). ``python -m captum_ext.demo`` is the same command with this
  module's parser.

``captum-ext --help`` lists the commands, ``captum-ext demo --help`` the demo's options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["DEMO_DESCRIPTION", "add_demo_arguments", "build_parser", "demo_main", "main"]

DEMO_DESCRIPTION = (
    "captum_ext demo: train a small CNN on BlockMNIST built from scikit-learn's real digits "
    "(offline); compute Saliency, IntegratedGradients, SmoothGrad, CAFO, CASO, sparse CASO and "
    "SmoothCASO maps; measure where CASO differs from CAFO (low confidence); score every method "
    "with pixel perturbation and DiffROAR (no retraining); write attributions.png, "
    "caso_vs_cafo.png, metrics.png, report.md and results.json to --out."
)


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the demo's options to ``parser`` and return it.

    Examples:
        >>> add_demo_arguments(argparse.ArgumentParser()).parse_args(["--full"]).mode
        'full'
    """
    from .demo.config import DEFAULT_OUT, MODES

    parser.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"output folder for the figures, report.md and results.json (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of everything random; same seed, same numbers (default: 0)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--mode",
        choices=MODES,
        default="default",
        help="quick: smoke test on small subsets; default: the demo (about a minute of CPU); "
        "full: more images (16), epochs and IntegratedGradients steps, every fraction (a few minutes)",
    )
    size.add_argument(
        "--quick", dest="mode", action="store_const", const="quick", help="same as --mode quick"
    )
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="same as --mode full")
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda if available, else cpu); an unavailable device is an error",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default: 1; the models are small, the numbers then do not "
        "depend on the core count, and multi-threaded torch slows down badly on a busy CPU)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def _run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Run the demo for parsed arguments; usage errors go through ``parser.error`` (exit 2)."""
    from .demo import MissingExtraError, resolve_device, run_demo

    try:
        resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        res = run_demo(
            args.out,
            mode=args.mode,
            seed=args.seed,
            device=args.device,
            progress=args.progress,
            command=f"{parser.prog} {' '.join(argv)}".strip(),
            threads=args.threads,
        )
    except MissingExtraError as err:
        parser.error(str(err))
    names = ", ".join(p.name for p in res.files.values())
    print(f"test accuracy {res.accuracy:.3f}; runtime {res.numbers['run']['seconds']:.1f} s")
    print(f"Results written to {res.out_dir.resolve()} ({names}); start with report.md")
    return 0


def build_parser(demo_prog: str | None = None) -> argparse.ArgumentParser:
    """The ``captum-ext`` parser with one sub-parser per command.

    Args:
        demo_prog: the program name the demo's usage and report show (default
            ``"captum-ext demo"``; ``python -m captum_ext.demo`` passes its own).

    Examples:
        >>> build_parser().parse_args(["demo", "--quick"]).mode
        'quick'
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="captum-ext",
        description="captum_ext command line: second-order saliency (CASO/CAFO), attribution "
        "metrics and gradient regularizers for Captum.",
    )
    parser.add_argument("--version", action="version", version=f"captum-ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo_parser = sub.add_parser(
        "demo",
        help="train a small CNN on offline BlockMNIST, compare seven attribution methods, write "
        "figures and a report",
        description=DEMO_DESCRIPTION,
        **({"prog": demo_prog} if demo_prog else {}),
    )
    add_demo_arguments(demo_parser)
    demo_parser.set_defaults(handler=_run_demo, command_parser=demo_parser)
    return parser


def main(argv: Sequence[str] | None = None, *, demo_prog: str | None = None) -> int:
    """Entry point of the ``captum-ext`` console script.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        demo_prog: see :func:`build_parser`.

    Returns:
        The exit status (0 on success). ``--help`` and usage errors exit through ``SystemExit``
        (status 0 and 2), as argparse does.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(demo_prog).parse_args(args_list)
    rest = args_list[args_list.index(args.command) + 1 :]
    return int(args.handler(args, args.command_parser, rest))


def demo_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m captum_ext.demo``: ``captum-ext demo`` under its own name.

    Args:
        argv: the demo's arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success).
    """
    rest = list(sys.argv[1:] if argv is None else argv)
    return main(["demo", *rest], demo_prog="python -m captum_ext.demo")


if __name__ == "__main__":
    sys.exit(main())
