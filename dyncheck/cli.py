"""The ``dyncheck`` command line: ``check`` and ``rules`` (``report``, ``demo``, ``baseline``, ``compare`` build on
the same reader API). Exit codes: 0 nothing at or above ``--fail-on``; 1 something is; 2 usage, configuration or
I/O error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .errors import DyncheckError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 (argparse's default), with the usage line first
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _rules_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", nargs="+", action="extend", metavar="FILE",
                   help="rule files, layered in order; 'default' is the built-in pack (default: default). "
                        "To add your checks to the default pack: --rules default mine.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dyncheck", description="Checkable training dynamics: check runs recorded by "
                                                   "dyncheck.DynamicsMonitor.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dyncheck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("check", help="evaluate checks on a run; exit 1 if a finding is at or above --fail-on",
                       description="Evaluate the checks of the rule files on a recorded run.")
    p.add_argument("run", metavar="RUN", help="run directory (holding run.db) or the .db file")
    _rules_arg(p)
    p.add_argument("--format", choices=["text", "json", "junit"], default="text", help="output format (text)")
    p.add_argument("--fail-on", choices=["error", "warning", "never"], default="error",
                   help="exit 1 when a finding has at least this severity (error)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE instead of stdout")
    p.add_argument("--no-hints", action="store_true", help="text format: leave out the hints")

    r = sub.add_parser("rules", help="list the checks of rule files, validate a rule file, list detectors")
    rsub = r.add_subparsers(dest="rules_command", metavar="ACTION", parser_class=_Parser)
    rsub.required = True
    rl = rsub.add_parser("list", help="list the checks that the rule files define (after layering)")
    _rules_arg(rl)
    rl.add_argument("--format", choices=["text", "json"], default="text")
    rv = rsub.add_parser("validate", help="validate rule files; exit 2 and print file:line:col errors if invalid")
    rv.add_argument("files", nargs="+", metavar="FILE", help="rule files ('default' for the built-in pack); "
                                                            "later files may override earlier ones")
    rsub.add_parser("detectors", help="list the generic detectors and their parameters")
    return parser


def _cmd_check(args: argparse.Namespace) -> int:
    from .checks.engine import evaluate
    from .checks.output import format_json, format_junit, format_text
    from .checks.rules import load_rules
    from .store import open_run

    rules = load_rules(args.rules or ["default"])
    with open_run(args.run) as run:
        result = evaluate(run, rules)
    if args.format == "json":
        out = format_json(result)
    elif args.format == "junit":
        out = format_junit(result, name=f"dyncheck.{Path(args.run).name or 'run'}")
    else:
        out = format_text(result, title=str(args.run), hints=not args.no_hints)
    _emit(out, args.output)
    if args.fail_on == "never":
        return EXIT_OK
    return EXIT_FAIL if result.at_or_above(args.fail_on) else EXIT_OK


def _emit(text: str, output: str | None) -> None:
    if output:
        try:
            Path(output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        except OSError as e:
            raise DyncheckError(f"cannot write --output {output}: {e.strerror or e}") from None
    else:
        print(text)


def _cmd_rules(args: argparse.Namespace) -> int:
    from .checks.detectors import DETECTORS
    from .checks.rules import load_rules

    if args.rules_command == "validate":
        rules = load_rules(args.files)
        print(f"ok: {len(rules)} checks in {', '.join(rules.sources)}"
              + (f" ({len(rules.disabled)} disabled)" if rules.disabled else ""))
        return EXIT_OK
    if args.rules_command == "detectors":
        for d in DETECTORS.values():
            params = ", ".join(f"{k}={default!r}" for k, (_, default) in d.params.items()) or "no parameters"
            print(f"{d.name} ({d.kind}): {params}")
            print(f"    {d.doc}\n")
        return EXIT_OK
    rules = load_rules(args.rules or ["default"])
    if args.format == "json":
        print(json.dumps([c.to_dict() for c in rules], indent=2))
        return EXIT_OK
    width = max((len(c.id) for c in rules), default=10)
    for c in rules:
        metrics = f"{c.pair[0]} vs {c.pair[1]}" if c.pair else ", ".join(c.metrics)
        print(f"{c.id:<{width}}  {c.severity:<7}  {c.detector:<15}  {c.summary}")
        print(f"{'':<{width}}  {'':<7}  {'':<15}  on {metrics}")
    for cid in sorted(rules.disabled):
        print(f"{cid:<{width}}  disabled")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "rules":
            return _cmd_rules(args)
    except DyncheckError as e:
        print(f"dyncheck {args.command}: error: {e}" if "\n" not in str(e)
              else f"dyncheck {args.command}: error:\n{e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
