"""YAML files that refuse a key given twice.

`yaml.safe_load` keeps the last value when a mapping repeats a key (`lr: 1e-3` ... `lr: 2e-3`), so a typo in a
recipe or a study silently changes what runs. `loads` and `load` parse like `yaml.safe_load` but raise
`DuplicateKeyError` naming the file, both lines and the key; a file that is not valid YAML raises
`YAMLFileError` naming the file and the line. Merge keys (`<<: *base`) work as YAML specifies: a key that
comes from a merge and is then given explicitly overrides the merged value, which is not an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "YAMLFileError", "load", "loads"]

MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLFileError(ValueError):
    """A YAML file that cannot be read; the message is one line naming the file, the line and the fix."""


class DuplicateKeyError(YAMLFileError):
    """A mapping that gives one key twice."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that checks the explicit keys of every mapping before it is built."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source
        self._checked: set[int] = set()

    def _check_keys(self, node: yaml.Node) -> None:
        # once per node: flatten_mapping rewrites node.value in place, with the merged keys ahead of the explicit ones
        if not isinstance(node, yaml.MappingNode) or id(node) in self._checked:
            return
        self._checked.add(id(node))
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.get(key)
            except TypeError:  # an unhashable key: SafeConstructor reports it
                continue
            if seen is not None:
                raise DuplicateKeyError(
                    f"{self.source} line {key_node.start_mark.line + 1}: key {key!r} is given twice in one mapping "
                    f"(first at line {seen.start_mark.line + 1}); keep one")
            first[key] = key_node

    def flatten_mapping(self, node):
        # a merge (`<<: *base`) flattens its source here, possibly before that source is constructed: check it first
        # (SafeConstructor flattens each merge source through this method too)
        self._check_keys(node)
        super().flatten_mapping(node)

    def construct_mapping(self, node, deep=False):
        self._check_keys(node)
        return super().construct_mapping(node, deep=deep)


def _one_line(e: yaml.YAMLError, source: str) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{source} line {mark.line + 1}" if mark is not None else source
    problem = " ".join(str(getattr(e, "problem", None) or e).split())
    context = getattr(e, "context", None)
    if context and getattr(e, "problem", None):
        problem = f"{' '.join(str(context).split())}: {problem}"
    return f"{where}: not valid YAML ({problem}); fix the syntax there"


def loads(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document like `yaml.safe_load`, refusing a key given twice in one mapping."""
    loader = _Loader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise YAMLFileError(_one_line(e, source)) from None
    finally:
        loader.dispose()


def load(path: str | Path) -> Any:
    """`loads` of a file's text (UTF-8); errors name the file."""
    return loads(Path(path).read_text(encoding="utf-8"), source=str(path))
