"""The configuration reference, read from the config dataclasses (r1kit/config.py) and their comments.

Every field becomes a row: its dotted key (as a recipe or an ``a.b=c`` override spells it), type, default and
the comment that documents it in the source. Comments are read with ``tokenize`` from the file that defines
the dataclass: a field's trailing comment, and the full-line comments around it. A block of comment lines
above a field belongs to that field, unless that field has a trailing comment of its own, in which case the
block continues the field before it (``name_or_path: ...  # hub name, ...,`` followed by ``# a .gguf file``).
A block that starts ``# ---`` is a section heading inside a class.

    python docs/hooks/config_reference.py        # print the page
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # document this checkout's r1kit, not an installed one
    sys.path.insert(0, str(ROOT))


@dataclasses.dataclass
class FieldDoc:
    key: str  # dotted path, e.g. rollout.vllm.kv_cache_gb; list items: rewards[].weight
    type: str
    default: str
    comment: str
    heading: str = ""  # a "# ---" section heading in the class, just above this field


def source_comments(cls) -> tuple[dict[str, str], dict[str, str], str]:
    """(field -> its comment, field -> the section heading just above it, the class docstring) of one dataclass."""
    path = inspect.getsourcefile(cls)
    source = Path(path).read_text()
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and node.lineno <= tok.start[0] <= node.end_lineno:
            whole = not tok.line[: tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), whole)
    fields = [(n.target.id, n.lineno, n.end_lineno) for n in node.body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    docs = {name: [] for name, _, _ in fields}
    headings: dict[str, str] = {}
    previous = None
    for name, start, end in fields:
        trailing = [comments[line][0] for line in range(start, end + 1) if line in comments and not comments[line][1]]
        block, line = [], start - 1
        while line in comments and comments[line][1]:
            block.insert(0, comments[line][0])
            line -= 1
        if block and block[0].startswith("---"):
            headings[name] = block.pop(0).strip("- ")
        if block and trailing and previous is not None:  # continues the field before
            docs[previous] += block
        else:
            docs[name] += block
        docs[name] += trailing
        previous = name
    last_end = fields[-1][2] if fields else node.lineno
    tail = [comments[ln][0] for ln in range(last_end + 1, node.end_lineno + 1) if ln in comments and comments[ln][1]]
    if previous is not None:
        docs[previous] += tail
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(cls.__name__ + "("):  # dataclasses write a signature where the class has no docstring
        doc = ""
    return {k: " ".join(v) for k, v in docs.items()}, headings, doc


def type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is list:
        return "list of entries (below)" if dataclasses.is_dataclass(args[0]) else f"list of {type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "section (below)"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def default_text(f: dataclasses.Field) -> str:
    import yaml

    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return ""
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = [dataclasses.asdict(v) for v in value]
    return "`" + yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...") + "`"


def field_docs(cls, prefix: str = "") -> list[tuple[str, str, list[FieldDoc]]]:
    """[(section key, its docstring, its fields)] for `cls` and every dataclass below it, depth first."""
    hints = typing.get_type_hints(cls)
    comments, headings, doc = source_comments(cls)
    own, below = [], []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list and typing.get_args(tp) else None
        own.append(FieldDoc(key, type_name(tp), default_text(f), comments.get(f.name, ""), headings.get(f.name, "")))
        if dataclasses.is_dataclass(tp):
            below += field_docs(tp, key + ".")
        elif item is not None and dataclasses.is_dataclass(item):
            below += field_docs(item, key + "[].")
    return [(prefix.rstrip("."), doc, own), *below]


def escape(text: str) -> str:
    """Comment text as a Markdown table cell: no HTML tags, pipes or emphasis from the source's punctuation."""
    parts = text.split("`")  # odd parts are code spans: kept as written
    for i in range(0, len(parts), 2):
        part = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = part.replace("*", "\\*").replace("_", "\\_")
    return "`".join(parts).replace("|", "\\|")


def config_page() -> str:
    from r1kit.config import Config

    out = ["# Configuration reference", "",
           "Generated from the dataclasses in `r1kit/config.py` when the site is built. A recipe is YAML with the "
           "same tree; on the command line any key is set with `key=value` (values are read as YAML: "
           "`train.learning_rate=1e-5`, `log.report_to=[tensorboard]`). Unknown keys and wrong types stop the run "
           "before anything starts, naming the key; `r1kit/config_checks.py` holds the checks across keys. "
           "A run writes the resolved config (recipe, overrides, algorithm preset) to `runs/<name>/config.yaml`."]
    for section, doc, fields in field_docs(Config):
        out += ["", f"## `{section}`" if section else "## top level", ""]
        if doc and section:
            out += [escape(" ".join(doc.split())), ""]
        out += ["| key | type | default | what it is |", "|---|---|---|---|"]
        out += [f"| `{f.key}` | {f.type} | {f.default.replace('|', chr(92) + '|')} | "
                f"{'*' + escape(f.heading) + '.* ' if f.heading else ''}{escape(f.comment)} |" for f in fields]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(config_page())
