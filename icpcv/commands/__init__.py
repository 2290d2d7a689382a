"""The command line, thin: every subcommand parses its options, builds a config and calls the rooms.

One module per subcommand (``run``, ``analyze``/``calibrate``, ``report``/``compare``, ``prepare``,
``bench``, ``power``), each with ``add_parser(subparsers)``. No room imports this wing. The rooms a command
needs are imported when it runs (``# lazy: start-up time``): ``icpcv --help`` must not load torch.

User mistakes (InputError, RunDirError) are printed as one sentence with exit code 2; failed
folds (FoldsFailed: the others finished and are kept) with exit code 3; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from icpcv import __version__
from icpcv.commands import analyze, bench, power, predict, prepare, report, run
from icpcv.errors import FoldsFailed, InputError, RunDirError
from icpcv.plausible import check_parsed, plain_numbers
from icpcv.util import clip

#: the longest error message printed whole
MESSAGE_CHARS = 10_000

SUBCOMMANDS = (run, analyze, report, prepare, bench, power, predict)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icpcv", description="Do OCT scans plus IOP really predict ICP? "
                                     "Leave-one-monkey-out cross-validation with monkey-level statistics.")
    parser.add_argument("--version", action="version", version=f"icpcv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    plain_numbers(parser)  # "1_0" and full-width digits are not numbers as a lab writes them (docs/inputs.md)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return subs.choices[command]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:  # the benchmark's own parser takes every option after its name
            return bench.main(argv[1:])
        parser = make_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        # every numeric option against its range (icpcv.plausible), before the command writes anything
        check_parsed(_subparser(parser, args.command), args, args.command)
        return int(args.func(args) or 0)
    except FoldsFailed as exc:
        print(f"icpcv: error: {clip(exc, MESSAGE_CHARS)}", file=sys.stderr)
        return 3
    except (InputError, RunDirError) as exc:  # a user's cell quoted in a message is clipped there; this is the net
        print(f"icpcv: error: {clip(exc, MESSAGE_CHARS)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("icpcv: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
