"""The docs' generated references, made from the code, committed in the repository and kept true by a test.

A reference page (docs/pages/reference/*.md) holds a region between marker lines

    <!-- generated: config (python docs/hooks.py --write) -->
    ...
    <!-- end of generated: config -->

filled with the markdown made here, from the objects users meet:
- config: every section and key of `distrain.config.Config`, with its type, default and the one-line
  docstring written under the field (read from the class's source);
- cli: the `distrain` command's argument parser, command by command;
- api: the public names of the `distrain` package (`distrain.__all__`), signature and docstring;
- components: the built-in names a config can use (the registry), with their keyword arguments.

The pages are written into the repository, so a reader of it can look a key up:

    python docs/hooks.py --write     # rewrite the regions of docs/pages/reference/*.md from the code
    python docs/hooks.py --check     # exit 1 naming each page that is not what the code makes now

tests/test_docs.py fails when a committed page is not what `--write` writes now. MkDocs runs this file as
a hook too (`on_page_markdown`): the site is made from the code as it is at build time, with the markers
left out. tests/test_docs.py imports this file (`config_keys` for "every key has a doc line").
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import html
import inspect
import os
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Iterator

# A generated region, or a bare start marker (a page whose region was never written).
MARKER = re.compile(
    r"^<!-- generated: (\w+)[^>]*-->\n(?:.*?^<!-- end of generated: \1 -->$)?", re.MULTILINE | re.DOTALL
)
REFERENCE = Path(__file__).resolve().parent / "pages" / "reference"


@dataclasses.dataclass
class Key:
    """One config key as the reference shows it."""

    dotted: str
    type: str
    default: str
    doc: str


@dataclasses.dataclass
class Section:
    name: str  # "" for the top-level keys
    doc: str
    keys: list[Key]


# ------------------------------------------------------------------------------------------------ config


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under a dataclass's fields (`x: int = 1` then `\"\"\"...\"\"\"`), by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # the class's statements
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _section_class(tp: Any) -> tuple[type | None, str]:
    """The dataclass a field's type opens as a section (`X`, `X | None`), or the value dataclass of a
    `dict[str, X]` (then the second item is the placeholder key, `<name>`)."""
    if dataclasses.is_dataclass(tp):
        return tp, ""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0], ""
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1], "<name>"
    return None, ""


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    return str(value)


def _type_name(f: dataclasses.Field) -> str:
    # The annotation as written in the source (the config modules use `from __future__ import annotations`).
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.replace("typing.", "")


def config_sections() -> list[Section]:
    """Every section of the config and its keys, in the order of the dataclasses."""
    from distrain.config.schema import Config

    sections: list[Section] = []

    def walk(cls: type, prefix: str, doc: str) -> None:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        section = Section(prefix, doc, [])
        sections.append(section)
        nested = []
        for f in dataclasses.fields(cls):
            sub, placeholder = _section_class(hints[f.name])
            dotted = f"{prefix}.{f.name}" if prefix else f.name
            if sub is not None:
                class_doc = (
                    inspect.getdoc(sub) if sub.__doc__ and not sub.__doc__.startswith(sub.__name__ + "(") else ""
                )
                text = " ".join(filter(None, [docs.get(f.name, ""), " ".join((class_doc or "").split())]))
                if _default(f) == "null":
                    text += " Optional: null leaves the section out."
                nested.append((sub, f"{dotted}.{placeholder}" if placeholder else dotted, text))
            else:
                section.keys.append(Key(dotted, _type_name(f), _default(f), docs.get(f.name, "")))
        for sub, name, text in nested:
            walk(sub, name, text)

    walk(Config, "", "Keys at the top level of the YAML file.")
    return [s for s in sections if s.keys]


def config_keys() -> Iterator[Key]:
    for section in config_sections():
        yield from section.keys


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str, cls: str | None = None) -> str:
    # Raw HTML: a backtick span would show the backslash that a `|` needs inside a markdown table.
    attr = f' class="{cls}"' if cls else ""
    return f"<code{attr}>{html.escape(text).replace('|', '&#124;')}</code>"


def config_markdown() -> str:
    out = []
    for section in config_sections():
        out.append(f"## `{section.name}`" if section.name else "## Top level")
        out.append("")
        out.append(section.doc)
        out.append("")
        out.append("| key | type | default | what it does |")
        out.append("|---|---|---|---|")
        for key in section.keys:
            # config-key: never wrapped mid-word (data.global / _batch_siz / e); stylesheets/extra.css
            out.append(
                f"| {_code(key.dotted, 'config-key')} | {_code(key.type)} | {_code(key.default)} | {_cell(key.doc)} |"
            )
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- cli


def cli_markdown() -> str:
    from distrain import cli

    parser = cli._parser()
    # A fixed width: the page is the same whatever terminal builds it.
    formatter = functools.partial(argparse.HelpFormatter, width=100, max_help_position=32)
    out = ["## `distrain`", "", "```text", _help(parser, formatter), "```", ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        out += [f"## `distrain {name}`", "", "```text", _help(sub, formatter), "```", ""]
    doc = inspect.getdoc(cli) or ""
    status = doc[doc.index("Exit status") :].split("\n\n")[0] if "Exit status" in doc else ""
    out += ["## Exit status", "", " ".join(status.split()), ""]
    return "\n".join(out)


def _help(parser: argparse.ArgumentParser, formatter: Any) -> str:
    parser.formatter_class = formatter
    return parser.format_help().rstrip()


# --------------------------------------------------------------------------------------------------- api


def _signature(obj: Any, *, annotations: bool = True, skip: tuple[str, ...] = ()) -> str:
    """`(a: int, *, b: str = 'x')` as written in the source; a default that is the live environment is
    shown by name, never by value."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parts, star = [], False
    for p in sig.parameters.values():
        if p.name in skip or p.name.startswith("_"):  # private: filled in by distrain (Run's _reporter)
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        star = star or p.kind is p.VAR_POSITIONAL
        if annotations and p.annotation is not p.empty:
            text += f": {p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)}"
        if p.default is not p.empty:
            default = "os.environ" if p.default is os.environ else repr(p.default)
            text += f" = {default}" if annotations and p.annotation is not p.empty else f"={default}"
        parts.append(text)
    return f"({', '.join(parts)})"


def api_markdown() -> str:
    import distrain

    out = [inspect.getdoc(distrain) or "", ""]
    for name in distrain.__all__:
        obj = getattr(distrain, name)
        kind = "class" if inspect.isclass(obj) else "function"
        # A Protocol (distrain.Callback) is not constructed: its methods, in the docstring, are the point.
        signature = "(Protocol)" if getattr(obj, "_is_protocol", False) else _signature(obj)
        out += [f"## `distrain.{name}`", "", f"```python\n{kind} {name}{signature}\n```", ""]
        out += [inspect.getdoc(obj) or "", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- registry

_FILLED_BY_RUN = (
    "params",
    "reduction",
    "size_average",
    "reduce",
    "kwargs",
    "preds",
    "targets",
    "run_dir",  # a logger's: filled in by the run (reporting/loggers.py)
    "cfg",
    "start_step",
    "optimizer",  # a scheduler's: the run's optimizer
)


def components_markdown() -> str:
    from distrain.config import registry

    out = []
    titles = {
        "data": "`data.name`",
        "model": "`model.name`",
        "loss": "`loss.name`",
        "metric": "`metrics.<name>.name`",
        "optim": "`optim.name`",
        "scheduler": "`schedule.name`",
        "callback": "`callbacks[i].name`",
        "logger": "`log.loggers`",
    }
    for kind in registry.KINDS:
        out += [
            f"## {titles[kind]}",
            "",
            "| name | import path | keyword arguments (`args`) | what it is |",
            "|---|---|---|---|",
        ]
        for name, path in sorted(registry.builtins(kind).items()):
            obj = registry.resolve(kind, name, titles[kind])
            # The parameters the run itself passes (the parameters to optimize, the reduction) are left out.
            args = _signature(obj, annotations=False, skip=_FILLED_BY_RUN).strip("()").lstrip("*, ")
            doc = _first_sentence(inspect.getdoc(obj) or "")
            args = _code(args) if args else "none"
            out.append(f"| `{name}` | `{path}` | {args} | {_cell(' '.join(doc.split()))} |")
        out.append("")
    return "\n".join(out)


GENERATORS = {"config": config_markdown, "cli": cli_markdown, "api": api_markdown, "components": components_markdown}


def fill(markdown: str) -> str:
    """The page with each generated region (or bare start marker) made anew from the code."""

    def region(m: re.Match) -> str:
        name = m.group(1)
        return (
            f"<!-- generated: {name} (python docs/hooks.py --write) -->\n\n"
            f"{GENERATORS[name]().strip()}\n\n<!-- end of generated: {name} -->"
        )

    return MARKER.sub(region, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs' hook: each generated region made from the code as it is now, without its marker lines."""
    return MARKER.sub(lambda m: GENERATORS[m.group(1)]().strip(), markdown)


def stale_pages(*, write: bool) -> list[Path]:
    """The reference pages whose generated regions differ from what the code makes now; `write`: rewrite them."""
    stale = []
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text()
        made = fill(text)
        if made != text:
            stale.append(page)
            if write:
                page.write_text(made)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check docs/pages/reference/*.md, made from the code.")
    parser.add_argument("--write", action="store_true", help="rewrite the pages that are not what the code makes")
    parser.add_argument("--check", action="store_true", help="exit 1 when a page is not what the code makes")
    args = parser.parse_args(argv)
    if not args.write and not args.check:
        parser.error("give --write or --check")
    stale = stale_pages(write=args.write)
    for page in stale:
        print(f"{'rewrote' if args.write else 'stale'}: {page}")
    return 1 if stale and not args.write else 0


def _first_sentence(doc: str) -> str:
    """A docstring's first sentence on one line (torch's class docstrings run on for pages)."""
    text = " ".join(doc.split("\n\n")[0].split())
    match = re.search(r"(?<=[a-z)\]`])\.(\s|$)", text)
    text = text[: match.start() + 1] if match else text
    return re.sub(r":math:`([^`]*)`", r"`\1`", text).replace("`_", "`")  # reST roles read as markdown


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REFERENCE.parents[2]))  # this checkout's distrain, whatever is installed
    sys.exit(main())
