"""Request fields treated as Google's own `google.api.field_behavior` annotations say.

AIP-203 (https://google.aip.dev/203). frontend/grpcapi.py applies the first two to every call of every
local gRPC service, before the service sees the request:

- OUTPUT_ONLY -> cleared (`clear_output_only`): ignored, never stored, never an error.
- REQUIRED missing -> INVALID_ARGUMENT (`missing_required` finds it). A nested message's
  REQUIRED fields count only when that message is present (a repeated one's: in each
  element). Where a method has several HTTP bindings (Cloud Build's
  ``projects/{project_id}/builds/{id}`` and ``{name=projects/*/locations/*/builds/*}``), the
  REQUIRED fields a binding takes from its path are satisfied by any binding whose path fields
  are all set: gcloud's regional commands send only `name`, so Google cannot require
  `project_id` there.
- IMMUTABLE -> `changed_immutable` finds an update that sets one to another value than the
  stored one; AIP-203: "should error with INVALID_ARGUMENT if a change is requested" (the
  same value, or leaving it out, is fine). The service refuses it in its own words.

The annotations: a protobuf class (``iam_policy_pb2``) carries them in its descriptor; the
proto-plus classes of google-cloud-run and google-cloud-build do not (they build descriptors
without the .proto options), so theirs come from `field_behavior_table`, generated from
googleapis/googleapis by scripts/field_behaviors.py. What a message type needs is worked out
once per type and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import proto  # type: ignore[import-untyped]
from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from cf2run.localcloud.frontend.field_behavior_table import BINDINGS, TABLE

_NAMES = field_behavior_pb2.FieldBehavior.Name


def _behaviors(field: FieldDescriptor) -> frozenset[str]:
    declared = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    if declared:
        return frozenset(_NAMES(b) for b in declared)
    assert field.containing_type is not None
    return frozenset(TABLE.get(field.containing_type.full_name, {}).get(_proto_name(field), ()))


def _proto_name(field: FieldDescriptor) -> str:
    """The field's name in its .proto: proto-plus appends ``_`` to names that are Python's
    (``object_``, ``type_``); .proto field names never end in one (AIP-140: lower_snake_case)."""
    return field.name.removesuffix("_")


def _is_map(field: FieldDescriptor) -> bool:
    return (field.message_type is not None
            and field.message_type.GetOptions().map_entry)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@dataclass(frozen=True)
class _Rules:
    """What one message type's annotations ask for (`nested`: its message-typed fields that
    may themselves hold annotated fields)."""

    required: tuple[FieldDescriptor, ...]
    output_only: tuple[str, ...]
    immutable: tuple[FieldDescriptor, ...]
    nested: tuple[FieldDescriptor, ...]
    #: For requests with several HTTP bindings: the fields that each binding takes from its
    #: path (any one set of them names the resource).
    bindings: tuple[tuple[FieldDescriptor, ...], ...]
    #: The REQUIRED fields one of the bindings takes from its path.
    named_by_path: frozenset[str]


@functools.cache
def _rules(descriptor: Descriptor) -> _Rules:
    required, output_only, immutable, nested = [], [], [], []
    for field in descriptor.fields:
        found = _behaviors(field)
        if "OUTPUT_ONLY" in found:
            output_only.append(field.name)
            continue
        if "REQUIRED" in found:
            required.append(field)
        if "IMMUTABLE" in found:
            immutable.append(field)
        if field.message_type is not None:
            nested.append(field)
    by_name = {_proto_name(field): field for field in descriptor.fields}
    ways = tuple(tuple(by_name[name] for name in way)
                 for way in BINDINGS.get(descriptor.full_name, ()))
    on_path = frozenset(field.name for way in ways for field in way)
    return _Rules(tuple(required), tuple(output_only), tuple(immutable), tuple(nested), ways,
                  frozenset(field.name for field in required if field.name in on_path))


def _pb(message: Message | proto.Message) -> Message:
    """The protobuf message behind `message` (a proto-plus wrapper shares it)."""
    return type(message).pb(message) if isinstance(message, proto.Message) else message


def _is_set(message: Message, field: FieldDescriptor) -> bool:
    if _is_repeated(field):
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        return message.HasField(field.name)
    # proto3 scalars without presence: the zero value is "not set"; a bool or a number can
    # not tell unset from zero, so only strings and bytes can be found missing.
    return field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) or bool(
        getattr(message, field.name))


def _children(message: Message, field: FieldDescriptor, path: str) -> Iterator[tuple[Message, str]]:
    """The messages `field` holds in `message`, each with its path (``containers[0]``)."""
    value = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        if value_field.message_type is not None:
            for key in value:
                yield value[key], f"{path}[{key}]"
    elif _is_repeated(field):
        for i, item in enumerate(value):
            yield item, f"{path}[{i}]"
    elif message.HasField(field.name):
        yield value, path


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def clear_output_only(message: Message | proto.Message) -> None:
    """Clear every OUTPUT_ONLY field of `message`, at any depth (in place)."""
    pb = _pb(message)
    rules = _rules(pb.DESCRIPTOR)
    for name in rules.output_only:
        pb.ClearField(name)
    for field in rules.nested:
        for child, _ in _children(pb, field, ""):
            clear_output_only(child)


def missing_required(message: Message | proto.Message, prefix: str = "") -> str | None:
    """The path of the first REQUIRED field `message` lacks (depth first), or None."""
    pb = _pb(message)
    rules = _rules(pb.DESCRIPTOR)
    named = any(all(_is_set(pb, field) for field in way) for way in rules.bindings)
    for field in rules.required:
        if named and field.name in rules.named_by_path:
            continue
        if not _is_set(pb, field):
            return _join(prefix, _proto_name(field))
    for field in rules.nested:
        for child, path in _children(pb, field, _join(prefix, _proto_name(field))):
            found = missing_required(child, path)
            if found is not None:
                return found
    return None


def changed_immutable(given: Message | proto.Message, current: Message | proto.Message,
                      prefix: str = "") -> str | None:
    """The path of the first IMMUTABLE field that `given` sets to a value other than
    `current`'s (both of one message type), or None."""
    new, old = _pb(given), _pb(current)
    rules = _rules(new.DESCRIPTOR)
    for field in rules.immutable:
        if _is_set(new, field) and getattr(new, field.name) != getattr(old, field.name):
            return _join(prefix, _proto_name(field))
    for field in rules.nested:
        if _is_repeated(field) or not (new.HasField(field.name) and old.HasField(field.name)):
            continue  # list elements have no identity to compare; an absent side changes nothing
        found = changed_immutable(getattr(new, field.name), getattr(old, field.name),
                                  _join(prefix, _proto_name(field)))
        if found is not None:
            return found
    return None
