"""Every command shown in the docs parses against the real CLI and is exercised by a test or the demo.

Commands are taken from README.md and docs/**/*.md: lines of fenced code blocks and inline code spans
that start with ``wxens`` (also ``.venv/bin/wxens``, after a ``$`` prompt, ``exec`` or ``VAR=value``),
``make TARGET`` and ``python -m MODULE``.

* ``wxens ...`` is parsed by the click command behind ``workflows.cli.app`` (``make_context``: options,
  their values' types and required arguments are checked, no command body runs). Placeholders
  (``RUN_DIR``, ``<path>``, ``i/N``, ``[--delete]``, ``...``) stay strings or lose their brackets.
  A documented command is *exercised* when its subcommand, and each option it uses, appears in an
  invocation written in a test (a list/tuple literal or the positional arguments of a call, read with
  ``ast`` from tests/**/*.py) or in the demo (the Makefile's recipes, ``workflows/demo.yaml``).
  Options are compared by click parameter, so ``-j 2`` in the docs matches ``--jobs`` in a test.
* ``make TARGET``: the target exists in the Makefile (its ``wxens`` recipe lines are the demo).
* ``python -m MODULE ARGS``: argparse modules run up to ``parse_args`` (which is stopped there), so a
  stale flag fails; each option must appear in a sequence of a test that imports the module.
  ``python -m pytest`` lines only need their paths to exist (that is what CI runs).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer.main

try:  # typer >= 0.16 ships its own copy of click
    from typer._click import exceptions as cx
    from typer._click.core import Command, ParameterSource
except ImportError:  # pragma: no cover
    from click import exceptions as cx
    from click.core import Command, ParameterSource

_EXIT = (typer.Exit, getattr(cx, "Exit", typer.Exit))  # raised by --help

REPO = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()

# --------------------------------------------------------------------------------------------------
# extraction from markdown
# --------------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"`((?:\.venv/bin/)?(?:wxens|make|python -m) [^`]+)`")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"^(<[^>]+>|[A-Z][A-Z0-9_]*)$")


@dataclass
class DocCommand:
    where: str  # file:line
    text: str
    kind: str  # wxens | make | python
    argv: list[str]  # after the program (wxens / make / python -m MODULE -> [MODULE, ...])
    inline: bool = False  # a `code span` in prose: may name a command without its arguments


def _tokens(text: str) -> list[str] | None:
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    out = []
    for tok in tokens:
        if tok == "...":
            continue
        if tok.startswith("[") and tok.endswith("]") and len(tok) > 2:
            tok = tok[1:-1]  # [--delete]
        elif tok.startswith("[") and len(tok) > 1 and tok[1] == "-":
            tok = tok[1:]  # [--shard
        elif tok.endswith("]") and not tok.startswith("["):
            tok = tok[:-1]  # i/N]
        out.append(tok)
    return out


def _classify(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(kind, argv) of a shell command line, or None when it runs none of ours."""
    i = 0
    while i < len(tokens) and (_ENV.match(tokens[i]) or tokens[i] in ("$", "exec")):
        i += 1
    rest = tokens[i:]
    if not rest:
        return None
    prog = rest[0]
    if prog == "wxens" or prog.endswith("/wxens"):
        return "wxens", rest[1:]
    if prog == "make" and len(rest) > 1:
        return "make", rest[1:]
    # python -m MODULE, also nested (py-spy record ... -- python -m MODULE)
    for j, tok in enumerate(rest[:-2]):
        if re.fullmatch(r"(.*/)?python3?", tok) and rest[j + 1] == "-m":
            return "python", rest[j + 2 :]
    return None


def doc_commands(paths: Iterable[Path], root: Path = REPO) -> list[DocCommand]:
    """Commands of fenced code blocks and inline code spans of markdown files."""
    found: list[DocCommand] = []
    for path in paths:
        name = path.relative_to(root) if path.is_relative_to(root) else path
        lines = path.read_text(encoding="utf-8").splitlines()
        in_block, pending, start = False, "", 0
        for n, line in enumerate(lines, 1):
            if _FENCE.match(line):
                in_block, pending = not in_block, ""
                continue
            if in_block:
                if not pending:
                    start = n
                stripped = line.strip()
                if stripped.startswith("$ "):
                    stripped = stripped[2:]
                if stripped.endswith("\\"):
                    pending += stripped[:-1] + " "
                    continue
                text, pending = pending + stripped, ""
                spans = [(start, text, False)]
            else:
                spans = [(n, m.group(1), True) for m in _INLINE.finditer(line)]
            for at, text, inline in spans:
                tokens = _tokens(text)
                kind = _classify(tokens) if tokens else None
                if kind is not None:
                    text = " ".join(re.sub(r"\s+#\s.*$", "", text).split())  # without the comment
                    found.append(DocCommand(f"{name}:{at}", text, *kind, inline=inline))
    return found


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


# --------------------------------------------------------------------------------------------------
# the real wxens command tree
# --------------------------------------------------------------------------------------------------
def wxens_command() -> Command:
    from workflows import cli

    cli._register()
    cmd = typer.main.get_command(cli.app)
    assert _is_group(cmd)
    return cmd


def _is_group(cmd: Command) -> bool:
    return hasattr(cmd, "commands")


def _options(cmd: Command) -> dict[str, str]:
    """Option string -> parameter name (``-j`` and ``--jobs`` -> ``jobs``)."""
    return {
        o: p.name
        for p in cmd.params
        if p.opts and p.opts[0].startswith("-")
        for o in (*p.opts, *p.secondary_opts)
    }


def _numeric(param) -> bool:  # type: ignore[no-untyped-def]
    td = getattr(param, "type_descriptor", None)
    if td is not None:
        return td.annotation in (int, float)
    return getattr(getattr(param, "type", None), "name", "") in ("integer", "float")


@dataclass(frozen=True)
class Use:
    """A subcommand (``("catalog", "show")``) and the options given to it (click parameter names)."""

    path: tuple[str, ...]
    options: frozenset[tuple[tuple[str, ...], str]] = field(default_factory=frozenset)


def _with_typed_placeholders(cmd: Command, args: list[str]) -> list[str]:
    """A placeholder value of a numeric option becomes 1 (``--gpus N``)."""
    out = list(args)
    params = {p.name: p for p in cmd.params}
    opts = _options(cmd)
    for k in range(1, len(out)):
        name = opts.get(out[k - 1])
        if name is not None and _PLACEHOLDER.match(out[k]) and _numeric(params[name]):
            out[k] = "1"
    return out


def parse_wxens(root: Command, argv: Sequence[str]) -> Use:
    """Parse ``wxens ARGV`` like the CLI does, without running anything; raises click errors."""
    path: list[str] = []
    options: set[tuple[tuple[str, ...], str]] = set()
    cmd: Command = root
    parent = None
    args = list(argv)
    while True:
        args = _with_typed_placeholders(cmd, args)
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                ctx = cmd.make_context(" ".join(["wxens", *path]), args, parent=parent)
            except _EXIT:  # --help
                return Use(tuple(path), frozenset(options))
        for name in set(_options(cmd).values()):
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
                options.add((tuple(path), name))
        if not _is_group(cmd):
            return Use(tuple(path), frozenset(options))
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            raise cx.UsageError(f"missing command after {' '.join(['wxens', *path])}")
        if _PLACEHOLDER.match(rest[0]):  # `wxens ARGS`: a generic form, not a command
            return Use(("<any>",))
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        path.append(name)
        cmd, parent, args = sub, ctx, rest


def scan_wxens(root: Command, tokens: Sequence[str | None], any_words: bool = False) -> Use | None:
    """Subcommand and options of a partly known argument list (None = computed in the test).

    Lists of stage names only (``stages=["forecast", "score"]``) are not taken for command lines
    unless ``any_words``.
    """
    consts = [t for t in tokens if t is not None]
    start = next((i for i, t in enumerate(tokens) if t in root.commands), None)
    if start is None:
        return None
    # before the command only the program (computed, `-m workflows.cli`, a script) and root options
    if not all(
        t is None or t.startswith("-") or t == "workflows.cli" or t.endswith(".py") for t in tokens[:start]
    ):
        return None
    cmd: Command = root
    path: list[str] = []
    options: set[tuple[tuple[str, ...], str]] = set()
    segments: list[tuple[Command, tuple[str, ...], list[str | None]]] = [(root, (), list(tokens[:start]))]
    i = start
    while _is_group(cmd) and i < len(tokens) and tokens[i] in cmd.commands:
        cmd = cmd.commands[tokens[i]]  # type: ignore[index]
        path.append(tokens[i])  # type: ignore[arg-type]
        i += 1
        j = i
        while j < len(tokens) and not (_is_group(cmd) and tokens[j] in cmd.commands):
            j += 1
        segments.append((cmd, tuple(path), list(tokens[i:j])))
        i = j
    if _is_group(cmd):
        return None
    if not any_words and all(
        t in _stage_names() for t in consts
    ):  # stages=["forecast", "score"], not a command line
        return None
    for c, p, seg in segments:
        opts = _options(c)
        for tok in seg:
            if tok is not None and tok.startswith("-"):
                name = opts.get(tok.split("=", 1)[0])
                if name is not None:
                    options.add((p, name))
    return Use(tuple(path), frozenset(options))


def _stage_names() -> frozenset[str]:
    from workflows.stages import REGISTRY

    return frozenset(REGISTRY)


# --------------------------------------------------------------------------------------------------
# invocations written in tests and in the demo
# --------------------------------------------------------------------------------------------------
def _sequence(node: ast.AST) -> list[str | None] | None:
    if isinstance(node, ast.List | ast.Tuple):
        elts = node.elts
    elif isinstance(node, ast.Call):
        elts = node.args
    else:
        return None
    return [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in elts]


@dataclass
class Source:
    name: str
    sequences: list[list[str | None]]
    imports: set[str]


def python_sources(paths: Iterable[Path]) -> list[Source]:
    """Argument-like sequences (and imported modules) of Python files."""
    out = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        seqs: list[list[str | None]] = []
        imports: set[str] = set()
        for node in ast.walk(tree):
            seq = _sequence(node)
            if seq:
                seqs.append(seq)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for line in node.value.splitlines():  # shell text: scripts, fake sbatch bodies
                    tokens = _tokens(line.strip())
                    kind = _classify(tokens) if tokens else None
                    if kind and kind[0] == "wxens":
                        seqs.append(list(kind[1]))
            if isinstance(node, ast.Import):
                imports.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imports.add(node.module)
                imports.update(f"{node.module}.{a.name}" for a in node.names)
        out.append(Source(str(path), seqs, imports))
    return out


def demo_sources(root: Path = REPO) -> list[Source]:
    """The demo: the Makefile's recipe lines and workflows/demo.yaml."""
    seqs: list[list[str | None]] = []
    for path in (root / "Makefile", root / "workflows" / "demo.yaml"):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip().lstrip("#").strip()
            tokens = _tokens(re.sub(r"\$\(\w+\)", "x", line.split("(=", 1)[-1].rstrip(")")))
            kind = _classify(tokens) if tokens else None
            if kind and kind[0] == "wxens":
                seqs.append(list(kind[1]))
    return [Source("the demo (Makefile, workflows/demo.yaml)", seqs, set())]


def sources_of_tests(root: Path = REPO) -> list[Source]:
    return python_sources(p for p in sorted((root / "tests").rglob("*.py")) if p.resolve() != THIS)


def make_targets(makefile: Path) -> set[str]:
    text = makefile.read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


# --------------------------------------------------------------------------------------------------
# python -m MODULE: argparse up to parse_args
# --------------------------------------------------------------------------------------------------
_DRIVER = r"""
import argparse, contextlib, io, json, runpy, sys
sys.path.insert(0, sys.argv[1])
class Parsed(Exception):
    pass
original = argparse.ArgumentParser.parse_args
def parse_and_stop(self, args=None, namespace=None):
    original(self, args, namespace)
    raise Parsed(self)
argparse.ArgumentParser.parse_args = parse_and_stop
results = []
for argv in json.loads(sys.argv[2]):
    sys.argv = list(argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        res = {"ok": True, "flags": None}  # ran to the end without argparse (and without failing)
    except Parsed as done:
        res = {"ok": True, "flags": {k: a.dest for k, a in done.args[0]._option_string_actions.items()}}
    except SystemExit as exc:
        res = {"ok": exc.code in (0, None), "flags": None, "error": err.getvalue().strip()[-300:]}
    except BaseException as exc:
        res = {"ok": False, "error": repr(exc)[-300:]}
    results.append(res)
sys.__stdout__.write("\nRESULTS " + json.dumps(results) + "\n")
"""


def parse_python_modules(argvs: list[list[str]], root: Path = REPO) -> list[dict]:
    """Run each ``python -m MODULE ARGS`` (one fresh process for all) until its ArgumentParser has
    parsed ARGS (``parse_args`` is stopped there); a module without argparse runs to its end.

    Returns per command ``ok``, ``error`` and ``flags`` (option string -> dest of the parser).
    ``pytest`` lines are not run: their paths must exist.
    """
    results: list[dict | None] = [None] * len(argvs)
    todo = []
    for k, argv in enumerate(argvs):
        if argv[0] == "pytest":
            missing = [a for a in argv[1:] if "/" in a and not (root / a).exists()]
            results[k] = {"ok": not missing, "error": f"no such test path: {missing}", "flags": None}
        else:
            todo.append(k)
    if todo:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
        proc = subprocess.run(
            [sys.executable, "-c", _DRIVER, str(root), json.dumps([argvs[k] for k in todo])],
            capture_output=True,
            text=True,
            cwd=root,
            env=env,
            timeout=300,
            check=False,
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
        assert proc.returncode == 0 and line, proc.stderr[-2000:]
        for k, res in zip(todo, json.loads(line[-1][len("RESULTS ") :]), strict=True):
            results[k] = res
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------------
def check_docs(
    commands: list[DocCommand], sources: list[Source], makefile: Path, root_cmd: Command, root: Path = REPO
) -> list[str]:
    """One line per problem: a command that does not parse, or a subcommand/option no test runs."""
    problems: list[str] = []
    used: set[tuple[str, ...]] = set()
    used_options: set[tuple[tuple[str, ...], str]] = set()
    for src in sources:
        for seq in src.sequences:
            use = scan_wxens(root_cmd, seq)
            if use is not None:
                used.add(use.path)
                used_options |= use.options
    targets = make_targets(makefile)
    python = [c for c in commands if c.kind == "python"]
    python_results = {
        id(c): r for c, r in zip(python, parse_python_modules([c.argv for c in python], root), strict=True)
    }
    for c in commands:
        if c.kind == "make":
            missing = [t for t in c.argv if not t.startswith("-") and "=" not in t and t not in targets]
            if missing:
                problems.append(f"{c.where}: `{c.text}`: no Makefile target {', '.join(missing)}")
            continue
        if c.kind == "python":
            res = python_results[id(c)]
            if not res["ok"]:
                problems.append(f"{c.where}: `{c.text}`: does not parse: {res.get('error')}")
                continue
            module, flags = c.argv[0], res.get("flags") or {}
            if module == "pytest":
                continue  # what CI runs
            importers = [
                s for s in sources if any(m == module or m.startswith(module + ".") for m in s.imports)
            ]
            if not importers:
                problems.append(f"{c.where}: `{c.text}`: no test imports {module}")
                continue
            tested = {
                flags[t.split("=", 1)[0]]
                for s in importers
                for seq in s.sequences
                for t in seq
                if t is not None and t.split("=", 1)[0] in flags
            }
            for tok in c.argv[1:]:
                dest = flags.get(tok.split("=", 1)[0])
                if dest is not None and dest not in tested:
                    problems.append(f"{c.where}: `{c.text}`: no test runs {module} with {tok}")
            continue
        try:
            use = parse_wxens(root_cmd, c.argv)
        except cx.ClickException as exc:
            if c.inline and isinstance(exc, cx.MissingParameter):
                # prose naming a command (`wxens verify`): its options were parsed before this
                use = scan_wxens(root_cmd, c.argv, any_words=True)
            else:
                problems.append(f"{c.where}: `{c.text}`: does not parse: {exc.format_message()}")
                continue
        assert use is not None
        if use.path == ("<any>",):
            continue
        for tok in c.argv:
            if tok.startswith(("workflows/", "tests/", "docs/")) and not (root / tok).exists():
                problems.append(f"{c.where}: `{c.text}`: no file {tok} in the repository")
        name = " ".join(["wxens", *use.path])
        if use.path and use.path not in used:
            problems.append(f"{c.where}: `{c.text}`: no test or demo runs `{name}`")
            continue
        for path, opt in sorted(use.options - used_options):
            problems.append(
                f"{c.where}: `{c.text}`: no test or demo runs `{' '.join(['wxens', *path])}` with {opt}"
            )
    return problems


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root_cmd() -> Command:
    return wxens_command()


@pytest.fixture(scope="module")
def documented() -> list[DocCommand]:
    commands = doc_commands(doc_files())
    assert len([c for c in commands if c.kind == "wxens" and not c.inline]) >= 20  # code blocks are read
    assert len([c for c in commands if c.kind == "wxens" and c.inline]) >= 20  # and spans in prose
    return commands


def test_documented_wxens_and_make_commands_parse_and_are_exercised(
    documented: list[DocCommand], root_cmd: Command
) -> None:
    commands = [c for c in documented if c.kind in ("wxens", "make")]
    assert {c.kind for c in commands} == {"wxens", "make"}
    problems = check_docs(commands, [*sources_of_tests(), *demo_sources()], REPO / "Makefile", root_cmd)
    assert not problems, "\n" + "\n".join(problems)


def test_documented_python_modules_parse_and_are_exercised(
    documented: list[DocCommand], root_cmd: Command
) -> None:
    """``python -m benchmarks ...``, ``python -m pipeline.experiment ...`` (one process: about 4 s)."""
    commands = [c for c in documented if c.kind == "python"]
    assert {c.argv[0] for c in commands} >= {"benchmarks", "benchmarks.profile", "pytest"}
    problems = check_docs(commands, sources_of_tests(), REPO / "Makefile", root_cmd)
    assert not problems, "\n" + "\n".join(problems)


def test_stale_or_untested_commands_are_reported(tmp_path: Path, root_cmd: Command) -> None:
    """The check fails for a made-up flag, a typo, a missing target and an option no test uses."""
    doc = tmp_path / "page.md"
    doc.write_text(
        "Run `wxens status RUN_DIR --json` or `wxens info STORE`:\n\n"
        "```bash\n"
        "wxens forecast f.yaml --run-dir r --no-such-flag   # stale\n"
        "wxens forcast f.yaml\n"
        "wxens submit W --gpus many\n"
        "$ wxens verify runs/x \\\n"
        "    [--delete]\n"
        "wxens submit workflows/nope.yaml -j 2\n"
        "wxens catalog show <store> -c mycat.yaml\n"
        "make no-such-target\n"
        "python -m mytool --no-such-flag\n"
        "python -m mytool --size 3   # tested\n"
        "python -m mytool --size=4 --verbose\n"
        "```\n"
    )
    (tmp_path / "mytool.py").write_text(
        "import argparse\n"
        "def main(argv=None):\n"
        "    p = argparse.ArgumentParser()\n"
        "    p.add_argument('--size', type=int)\n"
        "    p.add_argument('--verbose', '-v', action='store_true')\n"
        "    p.parse_args(argv)\n"
        "    raise SystemExit('ran past parse_args')\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    test_file = tmp_path / "test_x.py"
    test_file.write_text(
        "def test_x(main, p):\n"
        "    main(['verify', str(p)])\n"
        "    main(['status', p, '--json'])\n"
        "    main(['submit', p, '--jobs', '2'])\n"
        "    run_workflow(w, stages=['forecast', 'score'])\n"  # stage names, not `wxens forecast`
        "    levels = ['debug', 'info']\n"  # a word that names a command, not at a command's place
        "    import mytool\n"
        "    mytool.main(['--size', '5'])\n"
    )
    makefile = tmp_path / "Makefile"
    makefile.write_text("demo:\n\twxens run workflows/demo.yaml\n")
    cmds = doc_commands([doc], root=tmp_path)
    assert [c.where for c in cmds] == [f"page.md:{n}" for n in (1, 1, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14)]
    assert cmds[5].argv == ["verify", "runs/x", "--delete"]
    problems = check_docs(cmds, python_sources([test_file]), makefile, root_cmd, root=tmp_path)
    text = "\n".join(problems)
    assert len(problems) == 10, text
    assert "page.md:1: `wxens info STORE`: no test or demo runs `wxens info`" in text
    assert (
        "page.md:4: `wxens forecast f.yaml --run-dir r --no-such-flag`: does not parse: No such option: --no-such-flag"
        in text
    )
    assert "page.md:5: `wxens forcast f.yaml`: does not parse: No such command 'forcast'" in text
    assert "page.md:6: `wxens submit W --gpus many`: does not parse: Invalid value for '--gpus'" in text
    assert (
        "page.md:7: `wxens verify runs/x [--delete]`: no test or demo runs `wxens verify` with delete" in text
    )
    assert (
        "page.md:10: `wxens catalog show <store> -c mycat.yaml`: no test or demo runs `wxens catalog show`"
        in text
    )
    assert "page.md:9: `wxens submit workflows/nope.yaml -j 2`: no file workflows/nope.yaml" in text
    assert "page.md:11: `make no-such-target`: no Makefile target no-such-target" in text
    assert "page.md:12: `python -m mytool --no-such-flag`: does not parse: " in text
    assert "error: unrecognized arguments: --no-such-flag" in text
    assert "page.md:14: `python -m mytool --size=4 --verbose`: no test runs mytool with --verbose" in text
    # page.md:1 (status --json), 9 (-j = --jobs), 13 are exercised; the stage list runs nothing
    assert not any(p.startswith(("page.md:1: `wxens status", "page.md:13:")) for p in problems)
    assert sum(p.startswith("page.md:9:") for p in problems) == 1  # the file only
    assert sum("wxens forecast" in p for p in problems) == 1
