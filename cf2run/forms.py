"""The JSON schema the Prefect UI builds its run forms from, shaped so the forms check what they can.

Prefect stores each deployment's parameter schema (pydantic's, from the flow's signature) and
the UI draws a form from it. Two things of that UI decide the shape (prefect-ui-library,
src/schemas: maps/schema.ts and components/SchemaFormProperty*.vue; Prefect 3.9's default UI):

- The form validates its values with the server's /ui/schemas/validate before it creates a run,
  but with the schema as the UI mapped it: `pattern`, `maxLength`, `minimum` and the like are
  dropped from a property, while its `allOf` is passed on as written. So every constraint goes
  into an `allOf` beside the property's `type` (the form merges `allOf` into the field it draws,
  and the server checks it again when the run is created).
- An optional field (`anyOf: [X, {type: null}], default: null`) is drawn as an `X | None`
  toggle reading 'Property is type "None"', and a `null` default of a typed field is sent as
  null, which the field's type then refuses. So an optional field is drawn as `X` without a
  default: left empty, it is left out of the parameters, and the model's default (None) applies.

`form_schema` does both to a model's schema (`StrictModel` applies it to every model). A flow
parameter `target: Annotated[Target | None, WithJsonSchema(partial(Target, ...))]` is drawn as
Target's fields, all empty, and `override` applies the ones the user set to the manifest's (or
the default) target: a run keeps the deployment's target unless the user changes a field.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

#: JSON-schema keywords that constrain a value (the UI's form drops them outside `allOf`).
CONSTRAINTS = ("pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
               "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "uniqueItems",
               "minProperties", "maxProperties")


#: A model's fields the form shows after the others (`FORM_LAST: ClassVar[tuple[str, ...]]`).
LAST_ATTRIBUTE = "FORM_LAST"


def form_schema(schema: dict[str, Any], model: type[Any] | None = None) -> None:
    """Reshape a model's JSON schema in place for the UI's form (pydantic `json_schema_extra`):
    each field as `form_field` makes it; the model's rarely used fields (its FORM_LAST) last."""
    last = getattr(model, LAST_ATTRIBUTE, ())
    for name, field in schema.get("properties", {}).items():
        form_field(field)
        if name in last:
            field["position"] = 1  # the form sorts fields by position (stable; unset = 0)


def form_field(field: dict[str, Any]) -> None:
    """One property: optional without the null branch nor a null default; constraints in allOf."""
    options = field.get("anyOf")
    if isinstance(options, list):
        others = [option for option in options if option.get("type") != "null"]
        if len(others) == 1 and len(others) < len(options):
            del field["anyOf"]
            field.update({key: value for key, value in others[0].items() if key not in field})
            if field.get("default", ...) is None:
                del field["default"]
    if field.get("format") == "path":
        del field["format"]  # the form would label the field 'path' and check nothing
    constraints = {key: field.pop(key) for key in CONSTRAINTS if key in field}
    if constraints:
        field["allOf"] = [*field.get("allOf", []), constraints]


def partial(model: type[BaseModel], description: str) -> dict[str, Any]:
    """`model`'s schema, inline, with no field required nor defaulted: a form for the fields to
    change (each one left empty keeps its value)."""
    schema = copy.deepcopy(model.model_json_schema())
    schema.pop("required", None)
    for field in schema.get("properties", {}).values():
        field.pop("default", None)
    schema["description"] = description
    return schema


def override(base: BaseModel, changes: BaseModel | None) -> Any:
    """`base` with the fields `changes` was given (its fields set), validated again."""
    if changes is None or not changes.model_fields_set:
        return base
    data = base.model_dump() | changes.model_dump(include=changes.model_fields_set)
    return type(base).model_validate(data)

