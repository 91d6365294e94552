"""The ``captum-ext`` command line: ``captum-ext <command> [options]``.

Commands:

* ``demo`` -- the end-to-end demo of :mod:`captum_ext.demo` (train a CNN on offline BlockMNIST,
  six attribution methods, pixel perturbation and DiffROAR, figures and a Markdown report).

``captum-ext --help`` lists the commands, ``captum-ext demo --help`` the demo's options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-ext`` parser with one sub-parser per command.

    Examples:
        >>> build_parser().parse_args(["demo", "--quick"]).mode
        'quick'
    """
    from . import __version__, demo

    parser = argparse.ArgumentParser(
        prog="captum-ext",
        description="captum_ext command line: second-order saliency (CASO/CAFO), attribution "
        "metrics and gradient regularizers for Captum.",
    )
    parser.add_argument("--version", action="version", version=f"captum-ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo_parser = sub.add_parser(
        "demo",
        help="train a small CNN on offline BlockMNIST, compare six attribution methods, write "
        "figures and a report",
        description=demo.build_parser().description,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=demo.run_from_args, command_parser=demo_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captum-ext`` console script.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success). ``--help`` and usage errors exit through ``SystemExit``
        (status 0 and 2), as argparse does.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    rest = args_list[args_list.index(args.command) + 1 :]
    return int(args.handler(args, args.command_parser, rest))


if __name__ == "__main__":
    sys.exit(main())
