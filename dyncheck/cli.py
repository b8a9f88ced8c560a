"""The ``dyncheck`` command line: ``check``, ``report``, ``demo``, ``baseline``, ``compare``, ``import``, ``export``
and ``rules``.

``check``, ``report`` and ``compare`` take a dyncheck run or a log to import (TensorBoard, Lightning CSV, HF
``trainer_state.json``, W&B export): a log is imported into a temporary directory, removed when the command ends.
``check`` and ``export`` also take many runs (several arguments, directories of runs, globs: :mod:`dyncheck.runs`),
and ``report --compare`` other runs to overlay and compare with.

Exit codes: 0 pass (nothing at or above ``--fail-on``, no regression); 1 findings at or above ``--fail-on`` fired
(``check``) or something regressed (``compare``); 2 usage, configuration, input or I/O error; 3 the run could not
be judged: it did not finish (running or killed, interrupted, crashed; ``--allow-unfinished`` judges it on what it
recorded), it holds no series, or every check was skipped. ``check`` gives findings precedence over 3 (what fired
on the recorded part is real); ``compare`` gives 3 precedence (a partial run's losses are not comparable with a
whole run's); ``baseline`` exits 3 rather than write a baseline from an unfinished run or with no quantity. Over
many runs ``check`` exits 1 if any run has a finding at or above ``--fail-on``, else 2 if any run could not be read,
else 3 if any could not be judged, else 0; ``export`` exits 2 when a run could not be read (the others are
written)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._threads import one_blas_thread
from .errors import DyncheckError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNJUDGED = 0, 1, 2, 3
_ALLOW_HELP = ("judge a run that did not finish (running or killed, interrupted, crashed) on what it recorded "
               "instead of exiting 3")
DEMO_SCENARIO = "healthy-resnet-bn-cosine"
#: the demo's default run also probes sharpness, so that every section of the report has something to show
DEMO_MONITOR = {"sharpness_every_n_steps": 25}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 (argparse's default), with the usage line first
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _rules_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", nargs="+", action=_RulesAction, metavar="FILE",
                   help="rule files, layered in order; 'default' is the built-in pack (default: default). "
                        "To add your checks to the default pack: --rules default mine.yaml, --rules "
                        "default,mine.yaml or --rules default --rules mine.yaml. A run given after the files "
                        "(--rules default mine.yaml RUN) is taken as RUN.")


class _RulesAction(argparse.Action):
    """``--rules``: one or more files per use, repeatable, each value also a comma-separated list (a value that
    names an existing file is taken whole, commas and all)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for v in values if isinstance(values, list) else [values]:
            parts = [v] if "," not in v or os.path.exists(v) else [x.strip() for x in v.split(",") if x.strip()]
            if not parts:
                parser.error(f"argument --rules: expected a rule file or 'default', got {v!r}")
            items.extend(parts)
        setattr(namespace, self.dest, items)


_RUN_OR_LOG = ("run directory (holding run.db) or .db file, or a log to import: a TensorBoard log directory or "
               "event file, a Lightning metrics.csv, a trainer_state.json, a W&B history export (.csv, .jsonl)")


def _source_args(p: argparse.ArgumentParser, *, importing: bool = False) -> None:
    """The options that say how to read a log that is not a dyncheck run."""
    from .importers import FORMATS

    p.add_argument("--from", dest="source_format", choices=["auto", *FORMATS], default="auto",
                   help="the log's format (default: auto, from its name or the files a directory holds)")
    p.add_argument("--mapping", metavar="FILE", help="YAML file mapping the log's names onto dyncheck's "
                                                     "(README, 'Checking runs you already have')")
    p.add_argument("--finished", action="store_true",
                   help="the training this log comes from finished: record the run as finished (otherwise only "
                        "a log that says so is; the others are 'unconfirmed'"
                        + (")" if importing else ", which exits 3 unless --allow-unfinished)"))


def _is_rule_file(value: str) -> bool:
    return value == "default" or value.lower().endswith((".yaml", ".yml"))


def _looks_like_run(value: str) -> bool:
    return not _is_rule_file(value) and (value.endswith(".db") or os.path.isdir(value))


class _RulesParser(_Parser):
    """A command parser whose greedy ``--rules FILE ...`` leaves the command its positionals: with ``--rules
    default mine.yaml RUN`` argparse would take RUN as a third rule file and then miss RUN. Before parsing, the
    last values of ``--rules`` move to the positionals when the command would otherwise lack them (never a value
    that names a rule file: 'default', *.yaml, *.yml), and for a command that takes several runs (``baseline``)
    also the trailing values that name a run (a directory or a .db file)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if args is not None and "--rules" in self._option_string_actions:
            args = self._rules_then_positionals(list(args))
        return super().parse_known_args(args, namespace)

    def _option(self, token: str) -> argparse.Action | None:
        name = token.split("=", 1)[0]
        if name in self._option_string_actions:
            return self._option_string_actions[name]
        matches = [a for o, a in self._option_string_actions.items() if o.startswith(name) and name.startswith("--")]
        return matches[0] if len({id(a) for a in matches}) == 1 else None

    def _rules_then_positionals(self, args: list[str]) -> list[str]:
        positionals = [a for a in self._actions if not a.option_strings]
        need = sum(a.nargs if isinstance(a.nargs, int) else 1 if a.nargs in (None, "+") else 0 for a in positionals)
        variadic = any(a.nargs in ("+", "*") for a in positionals)
        groups: list[tuple[int, int, int]] = []  # (index of --rules, first value, end) of each --rules FILE ...
        given: list[int] = []  # indices of the positionals given
        n_pos, i = 0, 0
        is_option = lambda t: t.startswith("-") and t != "-"  # noqa: E731
        while i < len(args):
            token = args[i]
            if token == "--":
                n_pos += len(args) - i - 1
                break
            if not is_option(token):
                given.append(i)
                n_pos += 1
                i += 1
                continue
            action = self._option(token)
            if action is None or "=" in token or action.nargs == 0:
                i += 1
                continue
            j = i + 1
            if action.nargs in ("+", "*"):
                while j < len(args) and not is_option(args[j]):
                    j += 1
            elif action.nargs != "?" or (j < len(args) and not is_option(args[j])):
                j += action.nargs if isinstance(action.nargs, int) else 1
            if action.dest == "rules":
                groups.append((i, i + 1, j))
            i = j
        missing = need - n_pos
        moved: dict[int, list[str]] = {}
        for at, first, end in reversed(groups):
            values = args[first:end]
            take: list[str] = []
            while len(values) > 1 and ((missing > 0 and not _is_rule_file(values[-1]))
                                       or (variadic and _looks_like_run(values[-1]))):
                take.insert(0, values.pop())
                missing -= 1
            if take:
                moved[at] = take
        if not moved:
            return args
        skip: set[int] = set()
        for at, take in moved.items():
            end = next(e for a, _, e in groups if a == at)
            skip.update(range(end - len(take), end))
        # the moved values go right after the positionals given before them (or first): where no option takes
        # them as its value, and next to the positionals they belong with (argparse takes a list of runs at once)
        first_moved = min(moved)
        before = [k for k in given if k < first_moved]
        insert_at = before[-1] + 1 if before else 0
        tail = [v for at in sorted(moved) for v in moved[at]]
        out: list[str] = []
        for k, token in enumerate(args):
            if k == insert_at:
                out.extend(tail)
            if k not in skip:
                out.append(token)
        return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dyncheck", description="Checkable training dynamics: check runs recorded by "
                                                   "dyncheck.DynamicsMonitor.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"dyncheck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_RulesParser)
    sub.required = True

    p = sub.add_parser("check", help="evaluate checks on a run; exit 1 if a finding is at or above --fail-on",
                       description="Evaluate the checks of the rule files on a recorded run, or on many. Exit 0: "
                                   "pass; 1: a finding at or above --fail-on; 2: usage or input error; 3: the run "
                                   "could not be judged (it did not finish, holds no series, or every check was "
                                   "skipped). Over many runs: 1 if any run has such a finding, else 2 if any run "
                                   "could not be read, else 3 if any run could not be judged, else 0.")
    p.add_argument("runs", nargs="+", metavar="RUN", help=_RUN_OR_LOG + "; or several, a directory of runs (every "
                   "directory below it holding run.db) or a quoted glob ('runs/*/'): then one table, a JSON list or "
                   "one JUnit testsuite per run, and the exit code over all of them")
    _rules_arg(p)
    _source_args(p)
    p.add_argument("--format", choices=["text", "json", "junit"], default="text", help="output format (text)")
    p.add_argument("--fail-on", choices=["error", "warning", "never"], default="error",
                   help="exit 1 when a finding has at least this severity (error); 'never' still exits 3 for a "
                        "run that could not be judged")
    p.add_argument("--allow-unfinished", action="store_true", help=_ALLOW_HELP)
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE instead of stdout")
    p.add_argument("--no-hints", action="store_true", help="text format: leave out the hints")

    p = sub.add_parser("report", help="write the HTML health report of a run",
                       description="Write a run's self-contained HTML health report (opens offline; no server).")
    p.add_argument("run", metavar="RUN", help=_RUN_OR_LOG)
    p.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: RUN/report.html; for a log: "
                                                          "report.html in the log's directory)")
    _rules_arg(p)
    _source_args(p)
    p.add_argument("--no-checks", action="store_true", help="leave the checks out (charts and metadata only)")
    p.add_argument("--title", help="title shown in the report (default: the run directory's name)")
    p.add_argument("--compare", nargs="+", metavar="OTHER",
                   help="other runs (run directories, .db files, directories of runs, quoted globs) whose key "
                        "series are overlaid on RUN's, with RUN compared against a baseline made from them")

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
                                   "least 3x their spread. It holds a band per series over the run too (loss, "
                                   "gradient norms, sharpness: see README, 'Trajectories').")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or .db files)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="baseline file to write")
    _rules_arg(p)
    p.add_argument("--allow-unfinished", action="store_true",
                   help="take runs that did not finish as they are instead of exiting 3 (a baseline holds the "
                        "losses of the run a test trains: a partial run's are not those)")
    p.add_argument("--no-trajectories", action="store_true",
                   help="end values and findings only: no band per series over the run")

    p = sub.add_parser("compare", help="compare a run with a baseline; exit 1 on a regression",
                       description="Compare a run with a baseline file: a quantity worse than its tolerance, or a "
                                   "check that fires now but did not in the baseline, is a regression (exit 1).")
    p.add_argument("run", metavar="RUN", help=_RUN_OR_LOG)
    p.add_argument("--baseline", metavar="FILE", required=True, help="baseline written by dyncheck baseline")
    _rules_arg(p)
    _source_args(p)
    p.add_argument("--format", choices=["text", "json", "junit"], default="text", help="output format (text)")
    p.add_argument("--allow-unfinished", action="store_true", help=_ALLOW_HELP)
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE instead of stdout")

    p = sub.add_parser("import", help="read an existing log (TensorBoard, Lightning CSV, HF trainer_state.json, "
                                      "W&B export) into a dyncheck run",
                       description="Read a log that another tool wrote into a dyncheck run store (RUN/run.db), "
                                   "mapping its names onto dyncheck's (README, 'Checking runs you already have'). "
                                   "Prints what it imported, from which source name, and what it left out.")
    p.add_argument("source", metavar="SOURCE", help="a TensorBoard log directory or event file, a Lightning "
                                                    "metrics.csv, a trainer_state.json, a W&B history export "
                                                    "(.csv, .jsonl), or a directory holding one")
    p.add_argument("-o", "--output", metavar="RUN", required=True, help="run directory to write (RUN/run.db)")
    _source_args(p, importing=True)
    p.add_argument("--force", action="store_true", help="replace RUN/run.db if it exists")

    p = sub.add_parser("export", help="write runs into a partitioned Parquet dataset for fleet queries (DuckDB, ...)",
                       description="Write runs into a Parquet dataset at DIR: series/family=<family>/*.parquet "
                                   "(run_id, metric, step, value; partitioned by the metric's family, the name "
                                   "before its first '/'), runs/*.parquet (one row per run: status, verdict, "
                                   "optimizer, lr, model, steps, hyperparameters, findings) and findings/*.parquet "
                                   "(one row per finding). See README, 'Fleets: many runs'. Needs pyarrow "
                                   "(dyncheck[parquet]).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="runs, directories of runs (every directory below them "
                                                         "holding run.db), quoted globs, or logs to import")
    p.add_argument("--parquet", metavar="DIR", required=True,
                   help="directory to write the dataset to: new, empty, or a previous dyncheck export (replaced)")
    _rules_arg(p)
    p.add_argument("--no-checks", action="store_true", help="leave the checks out: no verdict, no findings")
    _source_args(p, importing=True)

    r = sub.add_parser("rules", help="list the checks of rule files, validate a rule file, list detectors")
    rsub = r.add_subparsers(dest="rules_command", metavar="ACTION", parser_class=_RulesParser)
    rsub.required = True
    rl = rsub.add_parser("list", help="list the checks that the rule files define (after layering)")
    _rules_arg(rl)
    rl.add_argument("--format", choices=["text", "json"], default="text")
    rv = rsub.add_parser("validate", help="validate rule files; exit 2 and print file:line:col errors if invalid")
    rv.add_argument("files", nargs="+", metavar="FILE", help="rule files ('default' for the built-in pack); "
                                                            "later files may override earlier ones")
    rsub.add_parser("detectors", help="list the generic detectors and their parameters")
    return parser


def _one_run(arg: str) -> bool:
    """Whether a lone RUN argument names one run itself (the single-run outputs), rather than a directory of runs
    or a glob: a run directory, a log, a file, or a path that does not exist (left to the reader's messages)."""
    from .importers import looks_like_log
    from .runs import is_glob
    from .store import STORE_FILENAME

    if is_glob(arg):
        return False
    p = Path(arg)
    return not p.is_dir() or os.path.lexists(p / STORE_FILENAME) or looks_like_log(p)


def _cmd_check(args: argparse.Namespace) -> int:
    from .checks.engine import evaluate
    from .checks.output import format_json, format_junit, format_text
    from .checks.rules import load_rules

    rules = load_rules(args.rules or ["default"])
    if len(args.runs) != 1 or not _one_run(args.runs[0]):
        return _check_many(args, rules)
    args.run = args.runs[0]
    allow = args.allow_unfinished
    with _open(args) as (run, imported):
        result = evaluate(run, rules)
    if args.format == "json":
        out = format_json(result, allow_unfinished=allow)
    elif args.format == "junit":
        out = format_junit(result, name=f"dyncheck.{Path(args.run).name or 'run'}", allow_unfinished=allow)
    else:
        out = format_text(result, title=str(args.run), hints=not args.no_hints, allow_unfinished=allow)
    _emit(out, args.output)
    if args.fail_on != "never" and result.at_or_above(args.fail_on):
        return EXIT_FAIL
    why = result.not_judged(allow)
    if why:
        return _unjudged("check", args.run, why, result.unfinished and not allow, imported)
    return EXIT_OK


def _check_many(args: argparse.Namespace, rules: Any) -> int:
    """``dyncheck check`` over several runs: each evaluated with the same rules; a run that cannot be read is an
    ``error`` row (the others are still checked); one table / JSON document / JUnit file; the exit code over all
    (:func:`~dyncheck.checks.output.gate_verdict`)."""
    from .checks.engine import evaluate
    from .checks.output import RunCheck, format_many_json, format_many_junit, format_many_text, gate_verdict
    from .runs import discover_runs

    allow = args.allow_unfinished
    refs = discover_runs(args.runs)
    _no_import_options(args, refs)
    checked = []
    for ref in refs:
        try:
            with _open_path(ref.name, args, kind=ref.kind) as (run, imported):
                checked.append((RunCheck(ref.name, evaluate(run, rules), source=ref.kind), imported))
        except DyncheckError as e:
            checked.append((RunCheck(ref.name, error=str(e), source=ref.kind), None))
    runs = [c for c, _ in checked]
    if args.format == "json":
        out = format_many_json(runs, fail_on=args.fail_on, allow_unfinished=allow)
    elif args.format == "junit":
        out = format_many_junit(runs, allow_unfinished=allow)
    else:
        out = format_many_text(runs, fail_on=args.fail_on, allow_unfinished=allow)
    _emit(out, args.output)
    for c, imported in checked:  # on stderr as for one run, also when the output went to a file
        if c.error is not None:
            print(f"dyncheck check: error: {c.name}: {c.error}", file=sys.stderr)
        elif not c.fails(args.fail_on) and c.not_judged(allow):
            _unjudged("check", c.name, c.not_judged(allow), c.result.unfinished and not allow, imported)
    gate = gate_verdict(runs, args.fail_on, allow)
    return {"fail": EXIT_FAIL, "error": EXIT_USAGE, "unjudged": EXIT_UNJUDGED, "pass": EXIT_OK}[gate]


def _no_import_options(args: argparse.Namespace, refs: Sequence[Any]) -> None:
    """--mapping and --finished apply to logs to import: given when every run found is a dyncheck run, an error."""
    if (getattr(args, "mapping", None) or getattr(args, "finished", False)) and refs \
            and all(r.kind == "run" for r in refs) and getattr(args, "source_format", "auto") == "auto":
        given = "--mapping" if args.mapping else "--finished"
        raise DyncheckError(f"{given} applies to a log to import; the runs given are dyncheck runs")


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """The run that RUN names, and None; or, for a log, the run imported into a temporary directory (removed
    afterwards) and the import's summary. The import options given with a run are an error."""
    from .importers import looks_like_log

    if args.source_format == "auto" and not looks_like_log(args.run):
        if args.mapping or args.finished:
            given = "--mapping" if args.mapping else "--finished"
            raise DyncheckError(f"{given} applies to a log to import; {args.run} is a dyncheck run")
    with _open_path(args.run, args) as opened:
        yield opened


@contextlib.contextmanager
def _open_path(path: str, args: argparse.Namespace, kind: str | None = None) -> Iterator[tuple[Any, Any]]:
    """The run at ``path`` and None; or, for a log (``kind="log"``, or by its name with ``--from auto``), the run
    imported into a temporary directory (removed afterwards) and the import's summary."""
    from .importers import imported, looks_like_log
    from .store import open_run

    fmt = getattr(args, "source_format", "auto")
    if kind == "run" or (kind is None and fmt == "auto" and not looks_like_log(path)):
        with open_run(path) as run:
            yield run, None
        return
    with imported(path, fmt=fmt, mapping=args.mapping, finished=args.finished) as (run, summary):
        print(f"dyncheck {args.command}: imported {path} ({summary.format}, {len(summary.names)} series; status "
              f"{summary.status}: {summary.status_reason}) into a temporary run", file=sys.stderr)
        yield run, summary


def _unjudged(command: str, run: str, why: str, unfinished: bool, imported: Any = None) -> int:
    """Say on stderr why the run could not be judged (also when the output went to a file); exit 3."""
    hint = " (--allow-unfinished judges it on what it recorded)" if unfinished else ""
    if unfinished and imported is not None and imported.status == "unconfirmed":
        hint = (" (the log does not say that training finished: --finished says it did, --allow-unfinished "
                "judges it on what it recorded)")
    print(f"dyncheck {command}: not judged: {run}: {why}{hint}", file=sys.stderr)
    return EXIT_UNJUDGED


def _emit(text: str, output: str | None) -> None:
    if output:
        from ._io import write_text

        write_text(output, text if text.endswith("\n") else text + "\n", what="output (-o)")
    else:
        print(text)


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    rules = None
    if not args.no_checks:
        from .checks.rules import load_rules

        rules = load_rules(args.rules or ["default"])
    elif args.rules:
        raise DyncheckError("--no-checks and --rules exclude each other")
    others = _compare_runs(args) if args.compare else []
    with _open(args) as (run, imported), contextlib.ExitStack() as stack:
        output, title = args.output, args.title
        if imported is not None:
            src = Path(args.run)
            output = output or str((src if src.is_dir() else src.parent) / "report.html")
            title = title or (src.resolve().name if src.is_dir() else f"{src.resolve().parent.name}/{src.name}")
        from .store import open_run

        opened = [stack.enter_context(open_run(p)) for p in others]
        path = write_report(run, output, rules=rules, title=title, compare=opened)
    print(path)
    return EXIT_OK


def _compare_runs(args: argparse.Namespace) -> list[Path]:
    """The runs ``--compare`` names (dyncheck runs only), less RUN itself."""
    from .runs import discover_runs

    refs = discover_runs(args.compare, what="--compare", logs=False)
    try:
        me = Path(args.run).resolve()
        me_dir = me.parent if me.suffix == ".db" and me.is_file() else me
    except OSError:
        me_dir = None
    out = []
    for r in refs:
        p = r.path.resolve()
        if (p.parent if p.suffix == ".db" else p) != me_dir:
            out.append(r.path)
    if not out:
        raise DyncheckError(f"--compare {' '.join(args.compare)}: names no run other than RUN itself")
    return out


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
    from .baseline import BaselineRefused, make_baseline
    from .checks.rules import load_rules

    try:
        base = make_baseline(args.runs, rules=load_rules(args.rules or ["default"]),
                             allow_unfinished=args.allow_unfinished,
                             trajectories=not getattr(args, "no_trajectories", False))
    except BaselineRefused as e:
        hint = " (--allow-unfinished takes it as it is)" if e.unfinished else ""
        print(f"dyncheck baseline: not written: {e}{hint}", file=sys.stderr)
        return EXIT_UNJUDGED
    from ._io import write_text

    write_text(args.output, base.to_yaml(), what="baseline")
    print(f"{args.output}: {len(base.quantities)} quantities, findings: {', '.join(base.findings) or 'none'}"
          + (f", trajectories: {', '.join(base.trajectories)}" if base.trajectories else ""))
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from .baseline import compare, format_comparison, format_comparison_junit, load_baseline
    from .checks.rules import load_rules

    base = load_baseline(args.baseline)
    allow = args.allow_unfinished
    rules = load_rules(args.rules or ["default"])
    with _open(args) as (run, imported):
        cmp = compare(run, base, rules=rules)
    if args.format == "json":
        out = json.dumps(cmp.to_dict(allow), indent=2, allow_nan=False)
    elif args.format == "junit":
        out = format_comparison_junit(cmp, name=f"dyncheck.compare.{Path(args.run).name or 'run'}",
                                      allow_unfinished=allow)
    else:
        out = format_comparison(cmp, title=str(args.run), allow_unfinished=allow)
    _emit(out, args.output)
    why = cmp.not_judged(allow)
    if why:  # before regressions: a partial run's losses are not comparable with a whole run's
        return _unjudged("compare", args.run, why, bool(cmp.run_ended) and not allow, imported)
    return EXIT_FAIL if cmp.regressions else EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .export import ParquetExport
    from .runs import discover_runs

    if args.no_checks and args.rules:
        raise DyncheckError("--no-checks and --rules exclude each other")
    rules = None
    if not args.no_checks:
        from .checks.rules import load_rules

        rules = load_rules(args.rules or ["default"])
    refs = discover_runs(args.runs)
    _no_import_options(args, refs)
    exp = ParquetExport(args.parquet, rules=rules)
    try:
        for ref in refs:
            try:
                with _open_path(ref.name, args, kind=ref.kind) as (run, _):
                    exp.add(ref.name, run, source=ref.kind,
                            path=None if ref.kind == "run" else str(Path(ref.name).resolve()))
            except ConfigError:
                raise
            except DyncheckError as e:
                exp.add_error(ref.name, str(e), source=ref.kind)
                print(f"dyncheck export: error: {ref.name}: {e}", file=sys.stderr)
        summary = exp.close()
    except BaseException:
        exp.abort()
        raise
    n_err = len(summary.errors)
    print(f"{summary.path}: {summary.runs} run{'s' * (summary.runs != 1)}, {summary.rows:,} series rows (families: "
          f"{', '.join(summary.families) or 'none'}), {summary.findings} findings, {summary.files} files in "
          f"{summary.seconds:.1f} s" + (f"; {n_err} run{'s' * (n_err != 1)} could not be read (rows with 'error' "
                                       f"set in runs/)" if n_err else ""))
    return EXIT_USAGE if summary.errors else EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    from .importers import import_log

    summary = import_log(args.source, args.output, fmt=args.source_format, mapping=args.mapping,
                         finished=args.finished, overwrite=args.force)
    for line in summary.lines():
        print(line)
    return EXIT_OK


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


class _Stdout:
    """Standard output while a command runs. A reader that went away (EPIPE: ``dyncheck check RUN | head``) ends
    the output quietly, the way Python's documentation recommends: the rest goes to os.devnull and the command
    exits with the code it would have had. Any other failure to write (ENOSPC: a full disk or ``> /dev/full``,
    EIO) is an error, exit 2."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.broken = False

    def _failed(self, exc: OSError) -> None:
        self.broken = True
        try:  # what is still buffered would fail again when Python flushes stdout at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a real file (captured): nothing left to flush there
            pass
        if not isinstance(exc, BrokenPipeError):
            reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise DyncheckError(f"cannot write to standard output: {reason}") from None

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except OSError as exc:
                self._failed(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    out = _Stdout(sys.stdout)
    sys.stdout = out
    command = None
    try:
        try:
            args = build_parser().parse_args(argv)
            command = args.command
            commands = {"check": _cmd_check, "report": _cmd_report, "demo": _cmd_demo, "baseline": _cmd_baseline,
                        "compare": _cmd_compare, "rules": _cmd_rules, "import": _cmd_import,
                        "export": _cmd_export}
            with one_blas_thread():  # small matrices: one BLAS thread is faster (dyncheck._threads)
                code = commands[command](args)
        except BaseException:  # also argparse's SystemExit (--help | head): flush, keep the first error
            try:
                out.flush()
            except DyncheckError:
                pass
            raise
        out.flush()
    except DyncheckError as e:
        who = f"dyncheck {command}" if command else "dyncheck"
        try:
            print(f"{who}: error: {e}" if "\n" not in str(e) else f"{who}: error:\n{e}", file=sys.stderr)
        except OSError:
            pass
        return EXIT_USAGE
    finally:
        sys.stdout = out.stream
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
