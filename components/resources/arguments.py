"""The component package's typed arguments, derived from the stack config models when this module loads.

Each hosted component's arguments are sections of `StackConfig` (`planning/config/`), with every field of
every model below them: a field added to a model is an argument at once, with its description, and it is
checked by the same validation as a stack file. Pulumi's schema inference (pulumi.provider.experimental)
reads classes' annotations, and each property's description from the string under it in the class's
source; so the classes are written as source text, registered with linecache, and executed.

Attribute names are the config keys (camelCase, e.g. rootVolumeGiB), which Pulumi keeps as they are: the
arguments a program passes are a stack file's sections, key for key. Literal choices and times are
strings here (the schema has no unions); the models check them on construct.
"""

from __future__ import annotations

import inspect
import linecache
import sys
import types
import typing
from datetime import datetime

import pulumi
from pydantic import AwareDatetime, BaseModel

from ..planning.config import StackConfig

SIMPLE = {str: "str", int: "int", float: "float", bool: "bool", datetime: "str", AwareDatetime: "str"}


class _Writer:
    def __init__(self) -> None:
        self.classes: dict[type[BaseModel], list[str]] = {}

    def type_text(self, annotation: typing.Any, where: str) -> str:
        """The annotation as the schema takes it: the models' own types, their Literals as the values' type."""
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if annotation in SIMPLE:
            return SIMPLE[annotation]
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            self.model(annotation)
            return annotation.__name__
        if origin is typing.Literal:
            kinds = {type(a) for a in args}
            if len(kinds) == 1 and kinds <= set(SIMPLE):
                return SIMPLE[kinds.pop()]
        if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
            return self.type_text(next(a for a in args if a is not type(None)), where)
        if origin is list and len(args) == 1:
            return f"list[{self.type_text(args[0], where)}]"
        if origin is dict and len(args) == 2 and args[0] is str:
            return f"dict[str, {self.type_text(args[1], where)}]"
        # A config type the schema cannot say: extend this mapping rather than let the argument go untyped.
        raise TypeError(f"{where}: no package argument type for {annotation!r}")

    def fields(self, model: type[BaseModel], names: list[str] | None = None) -> list[str]:
        lines = []
        for name, field in model.model_fields.items():
            key = field.alias or name
            if names is not None and key not in names:
                continue
            text = self.type_text(field.annotation, f"{model.__name__}.{key}")
            lines += [f"    {key}: {text if field.is_required() else f'typing.Optional[{text}]'}",
                      f"    {(field.description or '')!r}"]
        return lines

    def model(self, model: type[BaseModel]) -> None:
        if model in self.classes:
            return
        self.classes[model] = []  # placed before its fields' types are written: those come first in the source
        body = self.fields(model)
        del self.classes[model]
        self.classes[model] = [f"class {model.__name__}:", f"    {(model.__doc__ or model.__name__).strip()!r}", *body]


Extra = tuple[str, typing.Any, str]  # key, type (a config model or the text of a pulumi.Input type), description


def derive(components: dict[str, tuple[str, list[str], list[Extra]]], module_name: str) -> types.ModuleType:
    """A module holding, for each component `Name: (doc, StackConfig keys, extra inputs)`, the class
    `NameArgs` with those sections of the stack config and the extra inputs (a single section's model,
    the plain ids of other components' resources), and the classes of every model they contain."""
    writer = _Writer()
    args = {}
    for name, (doc, keys, extra) in components.items():
        missing = sorted(set(keys) - {f.alias or n for n, f in StackConfig.model_fields.items()})
        if missing:
            raise ValueError(f"{name}: no such stack config keys {missing}")
        more = []
        for key, annotation, description in extra:
            more += [f"    {key}: {annotation if isinstance(annotation, str) else writer.type_text(annotation, key)}",
                     f"    {description!r}"]
        args[name] = [f"class {name}Args:", f"    {doc!r}", *writer.fields(StackConfig, keys), *more]
    lines = ["import typing", "", "import pulumi", ""]
    for body in [*writer.classes.values(), *args.values()]:
        lines += [*body, ""]
    source = "\n".join(lines)
    filename = f"<{module_name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    sys.modules[module_name] = module  # inspect finds a class's source through its module
    exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)  # real types, not this file's lazy annotations
    return module
