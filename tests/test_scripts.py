"""The workflow scripts' command lines: each script's docstring Example is a complete command, and no
argument has a default.

A rule passes every setting to its script, and config.yaml is the one owner of the settings: so a
script requires what its rule always passes (`required=True`) and defaults nothing (a flag that only
some rules pass has no default, and the script checks it). The Example is what a user copies to run
a script by hand, so it must give every required flag. The scripts are read with `ast`, never run:
flags added by the shared helpers of fashionblip2/workflow_cli.py are read from those helpers, and
flags declared in a `for` loop over constants (f-string names) are expanded.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "workflow_scripts").glob("*.py"))
CLI_UTILS = REPO / "fashionblip2" / "workflow_cli.py"

# What an add_argument option name or `required=` may be built from: constants, loop variables,
# f-strings and comparisons (evaluated with the enclosing loops' values, nothing else in scope).
_EVALUABLE = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.In,
    ast.NotIn,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.Tuple,
    ast.List,
)


@dataclass
class Argument:
    options: tuple[str, ...]  # option strings ("--out", "-o"); empty for a positional argument
    required: bool
    has_default: bool
    where: str  # file:line of the declaration


@dataclass
class Declarations:
    """The arguments a module declares, by the variable they are added to (a parser, a subparser)."""

    arguments: dict[str, list[Argument]] = field(default_factory=dict)
    subparsers: dict[str, str] = field(default_factory=dict)  # variable -> subcommand name
    helper_calls: dict[str, list[str]] = field(default_factory=dict)  # variable -> helpers called on it


class _Collector(ast.NodeVisitor):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.env: dict[str, object] = {}  # the values of the enclosing constant `for` loops
        self.found = Declarations()

    def evaluate(self, node: ast.expr) -> object:
        expression = ast.Expression(node)
        bad = [type(n).__name__ for n in ast.walk(expression) if not isinstance(n, _EVALUABLE)]
        assert not bad, f"{self.path.name}:{node.lineno}: cannot read {ast.unparse(node)!r} ({bad[0]})"
        try:
            return eval(compile(expression, str(self.path), "eval"), {"__builtins__": {}}, dict(self.env))
        except NameError as e:
            raise AssertionError(f"{self.path.name}:{node.lineno}: cannot read {ast.unparse(node)!r}: {e}") from e

    def visit_For(self, node: ast.For) -> None:
        try:
            values = ast.literal_eval(node.iter)
        except ValueError:
            values = None
        if not isinstance(node.target, ast.Name) or not isinstance(values, tuple | list):
            self.generic_visit(node)
            return
        outer = dict(self.env)
        for value in values:
            self.env[node.target.id] = value
            for statement in node.body:
                self.visit(statement)
        self.env = outer

    def visit_Assign(self, node: ast.Assign) -> None:
        call = node.value
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "add_parser"
            and call.args
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.found.subparsers[target.id] = str(self.evaluate(call.args[0]))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "add_argument":
            receiver = func.value.id if isinstance(func.value, ast.Name) else "?"
            names = [str(self.evaluate(a)) for a in node.args]
            keywords = {k.arg: k.value for k in node.keywords}
            required = bool(self.evaluate(keywords["required"])) if "required" in keywords else False
            self.found.arguments.setdefault(receiver, []).append(
                Argument(
                    tuple(n for n in names if n.startswith("-")),
                    required,
                    "default" in keywords,
                    f"{self.path.name}:{node.lineno}",
                )
            )
        elif isinstance(func, ast.Name) and node.args and isinstance(node.args[0], ast.Name):
            self.found.helper_calls.setdefault(node.args[0].id, []).append(func.id)
        self.generic_visit(node)


def declarations(path: Path, tree: ast.AST | None = None) -> Declarations:
    collector = _Collector(path)
    collector.visit(tree if tree is not None else ast.parse(path.read_text()))
    return collector.found


def _helpers() -> dict[str, list[Argument]]:
    """The functions of workflow_cli.py that add arguments to the parser they are given."""
    helpers = {}
    for node in ast.parse(CLI_UTILS.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.args.args:
            found = declarations(CLI_UTILS, node)
            arguments = found.arguments.get(node.args.args[0].arg, [])
            if arguments:
                helpers[node.name] = arguments
    return helpers


HELPERS = _helpers()


def parser_arguments(path: Path) -> dict[str | None, list[Argument]]:
    """Each parser's arguments, its helpers' included: None is the main parser, else a subcommand."""
    found = declarations(path)
    out: dict[str | None, list[Argument]] = {}
    variables = set(found.arguments) | set(found.helper_calls) | set(found.subparsers)
    for variable in variables:
        arguments = list(found.arguments.get(variable, []))
        for helper in found.helper_calls.get(variable, []):
            arguments += HELPERS.get(helper, [])
        out.setdefault(found.subparsers.get(variable), []).extend(arguments)
    return out


def example_section(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    match = re.search(r"^Examples?:\s*$", doc, flags=re.MULTILINE)
    assert match, f"{path.name}: the docstring has no 'Example:' section"
    return doc[match.end() :]


def invocations(path: Path) -> list[str]:
    """The Example's commands that run this script: each from the script's name to the next one."""
    example = example_section(path)
    starts = [m.start() for m in re.finditer(rf"workflow_scripts/{re.escape(path.name)}\b", example)]
    assert starts, f"{path.name}: the Example never runs workflow_scripts/{path.name}"
    return [example[a:b] for a, b in zip(starts, starts[1:] + [len(example)], strict=True)]


def gives(command: str, argument: Argument) -> bool:
    return any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", command) for option in argument.options)


def test_helpers_declare_required_flags():
    """The helpers are found and read (else a script calling them would be checked for nothing)."""
    called = {h for path in SCRIPTS for calls in declarations(path).helper_calls.values() for h in calls}
    used = called & set(HELPERS)
    assert used, "no workflow script calls an argument helper of workflow_cli.py: update this test"
    for helper in used:
        assert any(a.required for a in HELPERS[helper]), f"{helper} declares no required flag"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_example_gives_every_required_flag(path):
    parsers = parser_arguments(path)
    assert any(a.required for arguments in parsers.values() for a in arguments), f"{path.name}: no required flag"
    subcommands = {name for name in parsers if name is not None}
    for command in invocations(path):
        arguments = list(parsers.get(None, []))
        if subcommands:
            words = command.split()
            shown = words[1] if len(words) > 1 else ""
            assert shown in subcommands, f"{path.name}: the Example's command {words[:2]} names no subcommand"
            arguments += parsers[shown]
        missing = [a.options[0] for a in arguments if a.required and a.options and not gives(command, a)]
        assert not missing, f"{path.name}: the Example lacks required flag(s) {missing} in:\n{command}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_no_argument_has_a_default(path):
    """config.yaml owns the settings: a script's arguments (its helpers' too) have no `default=`."""
    with_default = [
        f"{'/'.join(a.options) or 'positional'} ({a.where})"
        for arguments in parser_arguments(path).values()
        for a in arguments
        if a.has_default
    ]
    assert not with_default, f"{path.name}: arguments with a default: {with_default}"
