"""Reading a stack file's YAML strictly: a key given twice in one mapping is refused (YAML keeps the
last one without a word, so a fleet's second `nodes:` line would win), and a syntax error is told
as its line and column in plain words instead of the parser's own text."""

from __future__ import annotations

from typing import Any

import yaml

from .problems import ConfigError, Problem

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The parser's wording -> what it usually means in a hand-written stack file.
PLAIN = {
    "found character '\\t' that cannot start any token":
        "a tab character: YAML indents with spaces only; replace the tab with spaces",
    "found a tab character":
        "a tab character: YAML indents with spaces only; replace the tab with spaces",
    "mapping values are not allowed":
        "a ':' where no key can start: a 'key: value' continuing a value, or a value holding ': ' that needs quotes",
    "could not find expected ':'":
        "a line that is not 'key: value' inside a mapping: check the ':' after the key and the indentation",
    "did not find expected key":
        "this line does not line up with the keys of its mapping: check the spaces before it",
    "did not find expected '-' indicator":
        "this line does not line up with the items ('- ') of its list: check the spaces before it",
    "found undefined alias":
        "an alias (*name) with no anchor (&name) before it",
    "found unexpected end of stream":
        "the file ends inside a quoted value or a bracket: a closing quote or bracket is missing",
}


def _plain(exc: yaml.MarkedYAMLError, lines: list[str]) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    problem = (exc.problem or exc.context or "not valid YAML").strip()
    text = next((v for k, v in PLAIN.items() if problem.startswith(k)), problem)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "the file"
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    if "\t" in line and "tab" not in text:
        text += "; the line holds a tab character, which YAML does not take for indentation"
    return Problem(where, f"not valid YAML: {text}")


def _duplicates(node: yaml.Node, path: str, out: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            # Under config: the stack's keys as written (efa-infra:fleets), as every problem names them.
            sub = f"{path}.{key}" if path not in ("", "config") else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    out.append(Problem(sub, f"given twice in one mapping, on lines {seen[key]} and {line}; "
                                            "YAML would keep only the last: keep one"))
                else:
                    seen[key] = line
            _duplicates(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, f"{path}[{i}]", out)


def read(text: str, source: str) -> Any:
    """The document in `text`, or ConfigError naming each duplicate key or the syntax error."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        problems: list[Problem] = []
        _duplicates(node, "", problems)
        if problems:
            raise ConfigError(problems, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_plain(exc, text.splitlines())], source) from None
    except yaml.YAMLError as exc:  # a reader error (a character YAML does not take) has no problem mark
        raise ConfigError([Problem(source, f"not valid YAML: {exc}")], source) from None
    finally:
        loader.dispose()
