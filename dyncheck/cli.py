"""The ``dyncheck`` command line: ``check``, ``report``, ``demo``, ``baseline``, ``compare`` and ``rules``. Exit codes: 0 nothing at or above
``--fail-on``; 1 something is; 2 usage, configuration or I/O error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import DyncheckError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEMO_SCENARIO = "healthy-resnet-bn-cosine"
#: the demo's default run also probes sharpness, so that every section of the report has something to show
DEMO_MONITOR = {"sharpness_every_n_steps": 25}


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

    p = sub.add_parser("report", help="write the HTML health report of a run",
                       description="Write a run's self-contained HTML health report (opens offline; no server).")
    p.add_argument("run", metavar="RUN", help="run directory (holding run.db) or the .db file")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: RUN/report.html)")
    _rules_arg(p)
    p.add_argument("--no-checks", action="store_true", help="leave the checks out (charts and metadata only)")
    p.add_argument("--title", help="title shown in the report (default: the run directory's name)")

    p = sub.add_parser("demo", help="train a small model on scikit-learn's digits and write its report",
                       description="Train a small model on scikit-learn's digits (no download) with the monitor and "
                                   "the default checks, write the run and its HTML report, print the report's path. "
                                   "--scenario runs one of the failure modes instead.")
    p.add_argument("--scenario", metavar="NAME", help=f"a scenario from --list (default: {DEMO_SCENARIO}, healthy)")
    p.add_argument("--out", metavar="DIR", default="reports",
                   help="parent directory of the run: it is written to DIR/NAME (default: reports)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")

    p = sub.add_parser("baseline", help="summarise runs into a baseline file for dyncheck compare",
                       description="Write a baseline (YAML): the run's loss quantities and the checks that fired. "
                                   "With several runs (seeds), each quantity is their median and its tolerance at "
                                   "least 3x their spread.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or .db files)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="baseline file to write")
    _rules_arg(p)

    p = sub.add_parser("compare", help="compare a run with a baseline; exit 1 on a regression",
                       description="Compare a run with a baseline file: a quantity worse than its tolerance, or a "
                                   "check that fires now but did not in the baseline, is a regression (exit 1).")
    p.add_argument("run", metavar="RUN", help="run directory (holding run.db) or the .db file")
    p.add_argument("--baseline", metavar="FILE", required=True, help="baseline written by dyncheck baseline")
    _rules_arg(p)
    p.add_argument("--format", choices=["text", "json", "junit"], default="text", help="output format (text)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE instead of stdout")

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


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .store import open_run

    rules = None
    if not args.no_checks:
        from .checks.rules import load_rules

        rules = load_rules(args.rules or ["default"])
    elif args.rules:
        raise DyncheckError("--no-checks and --rules exclude each other")
    with open_run(args.run) as run:
        path = write_report(run, args.output, rules=rules, title=args.title)
    print(path)
    return EXIT_OK


def _scenarios() -> Any:
    try:
        from . import scenarios
    except ImportError as exc:
        raise DyncheckError(f"dyncheck demo needs scikit-learn, whose digits data set it trains on ({exc}); "
                            f"install it with: pip install 'dyncheck[demo]'") from None
    return scenarios


def _cmd_demo(args: argparse.Namespace) -> int:
    sc = _scenarios()
    if args.list:
        width = max(map(len, sc.SCENARIOS))
        for s in sc.SCENARIOS.values():
            kind = "healthy" if s.healthy else ", ".join(sorted(s.expected))
            default = "  (the default)" if s.name == DEMO_SCENARIO else ""
            print(f"{s.name:<{width}}  {kind}{default}\n{'':<{width}}  {s.summary}")
        return EXIT_OK
    name = args.scenario or DEMO_SCENARIO
    if name not in sc.SCENARIOS:
        raise DyncheckError(f"--scenario {name!r} is not a scenario; choose one of: {', '.join(sc.SCENARIOS)} "
                            f"(dyncheck demo --list describes them)")
    s = sc.SCENARIOS[name]
    what = "a healthy run" if s.healthy else f"a run with a known fault ({', '.join(sorted(s.expected))})"
    print(f"dyncheck demo: training {name}, {what}:\n  {s.summary}", flush=True)
    run_dir = sc.run_scenario(name, args.out, seed=args.seed, progress_bar=not args.no_progress,
                              monitor_kwargs=DEMO_MONITOR if args.scenario is None else None)
    report = run_dir / "report.html"
    if not report.exists():
        raise DyncheckError(f"the run finished but wrote no report at {report}; try: dyncheck report {run_dir}")
    print(f"run:    {run_dir}\nreport: {report}")
    return EXIT_OK


def _cmd_baseline(args: argparse.Namespace) -> int:
    from .baseline import make_baseline
    from .checks.rules import load_rules

    base = make_baseline(args.runs, rules=load_rules(args.rules or ["default"]))
    try:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(base.to_yaml(), encoding="utf-8")
    except OSError as e:
        raise DyncheckError(f"cannot write --output {args.output}: {e.strerror or e}") from None
    print(f"{args.output}: {len(base.quantities)} quantities, findings: {', '.join(base.findings) or 'none'}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from .baseline import compare, format_comparison, format_comparison_junit, load_baseline
    from .checks.rules import load_rules

    base = load_baseline(args.baseline)
    cmp = compare(args.run, base, rules=load_rules(args.rules or ["default"]))
    if args.format == "json":
        out = json.dumps(cmp.to_dict(), indent=2, allow_nan=False)
    elif args.format == "junit":
        out = format_comparison_junit(cmp, name=f"dyncheck.compare.{Path(args.run).name or 'run'}")
    else:
        out = format_comparison(cmp, title=str(args.run))
    _emit(out, args.output)
    return EXIT_FAIL if cmp.regressions else EXIT_OK


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
    commands = {"check": _cmd_check, "report": _cmd_report, "demo": _cmd_demo, "baseline": _cmd_baseline,
                "compare": _cmd_compare, "rules": _cmd_rules}
    try:
        return commands[args.command](args)
    except DyncheckError as e:
        print(f"dyncheck {args.command}: error: {e}" if "\n" not in str(e)
              else f"dyncheck {args.command}: error:\n{e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
