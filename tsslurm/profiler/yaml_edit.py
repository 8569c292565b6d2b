"""Writing measured fields into a profile's YAML text while keeping the rest of it as written:
the entries of one partition are replaced (or added) in place, found by the positions PyYAML's
composer reports, so comments and layout elsewhere survive. A document this cannot edit in place
(flow-style partitions, say) is dumped whole instead: the structure survives, comments do not.

Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

FLOW_MAPPING_MAX_ITEMS = 4
"""Small mappings of scalars are written on one line, like `queue_wait: {distribution: ...}`."""


class EditError(ValueError):
    """The document cannot be edited in place (its shape is not the block style expected)."""


def edit_in_place(text: str, partition: str, fields: Mapping[str, Any]) -> str:
    """`text` with `fields` set in the partition named `partition`, every other line kept."""
    item = _partition_node(text, partition)
    entries = {key.value: (key, value) for key, value in item.value}
    indent = item.value[0][0].start_mark.column
    edits: list[tuple[int, int, str]] = []
    append_at = _line_end(text, _content_end(item))
    for name, value in fields.items():
        if name in entries:
            key, node = entries[name]
            edits.append((key.start_mark.index, _line_end(text, _content_end(node)),
                          render_entry(name, value, indent)))
        else:
            entry = "\n" + " " * indent + render_entry(name, value, indent)
            edits.append((append_at, append_at, entry))
    for start, end, replacement in sorted(edits, key=lambda edit: edit[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _partition_node(text: str, partition: str) -> MappingNode:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        raise EditError(f"not valid YAML: {error}") from None
    partitions = _block_child(root, "partitions")
    if not isinstance(partitions, SequenceNode) or partitions.flow_style:
        raise EditError("partitions is not a block sequence")
    for item in partitions.value:
        if isinstance(item, MappingNode) and not item.flow_style and item.value and any(
                key.value == "name" and getattr(value, "value", None) == partition
                for key, value in item.value):
            return item
    raise EditError(f"no block-style partition named {partition!r}")


def _block_child(node: Node | None, key: str) -> Node | None:
    if not isinstance(node, MappingNode) or node.flow_style:
        raise EditError("the document is not a block mapping")
    for child_key, value in node.value:
        if child_key.value == key:
            return value
    return None


def _content_end(node: Node) -> int:
    """Where a node's own text ends: its last scalar or closing bracket (a block collection's
    end mark lies past the comments that follow it)."""
    if isinstance(node, ScalarNode) or getattr(node, "flow_style", False):
        return node.end_mark.index
    children = [child for pair in node.value for child in pair] \
        if isinstance(node, MappingNode) else list(node.value)
    return max((_content_end(child) for child in children), default=node.start_mark.index)


def _line_end(text: str, index: int) -> int:
    newline = text.find("\n", max(index - 1, 0))
    return len(text) if newline < 0 else newline


def render_entry(name: str, value: Any, indent: int) -> str:
    """`name: value` as block YAML whose continuation lines are indented for column `indent`."""
    inner = " " * (indent + 2)
    key = _scalar(name)
    if isinstance(value, Mapping) and value and not _small_flat(value):
        return f"{key}:" + "".join(f"\n{inner}{render_entry(k, v, indent + 2)}"
                                   for k, v in value.items())
    if _is_grid(value):
        return f"{key}:" + "".join(f"\n{inner}- {_flow(row)}" for row in value)
    return f"{key}: {_flow(value)}"


def _small_flat(value: Mapping[str, Any]) -> bool:
    return len(value) <= FLOW_MAPPING_MAX_ITEMS and not any(
        isinstance(v, (Mapping, list, tuple)) for v in value.values())


def _is_grid(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(row, (list, tuple)) for row in value)


def _flow(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_scalar(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    """One scalar as YAML; whole floats without `.0` (numbers load back as the field's type)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=False)
    return dumped.removesuffix("\n").removesuffix("\n...").strip()


def dump_whole(text: str, partition: str, fields: Mapping[str, Any]) -> str:
    """The whole document re-dumped with `fields` set in the partition (comments are lost)."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise EditError("the document is not a mapping")
    for item in data.get("partitions") or []:
        if isinstance(item, dict) and item.get("name") == partition:
            item.update(fields)
            return yaml.safe_dump(data, sort_keys=False, width=100)
    raise EditError(f"the profile has no partition named {partition!r}")
