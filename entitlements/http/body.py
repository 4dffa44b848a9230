"""Request bodies decoded once, strictly, straight from the bytes into the handler's Struct.

Litestar's own path decodes JSON to Python objects and then converts them leniently (it takes "5" for
5); a money API must not guess what a client meant. `StrictBody` is a DTO for every msgspec Struct body:
one decoder per handler, built on first use, and its errors name the field.
"""

from __future__ import annotations

import re
from types import UnionType
from typing import Any, Generic, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec
from litestar.dto import MsgspecDTO
from litestar.handlers import BaseRouteHandler
from litestar.typing import FieldDefinition

from entitlements.errors import ValidationFailed, one_of

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_decoders: dict[BaseRouteHandler, msgspec.json.Decoder[Any]] = {}


def closed_set(annotation: Any) -> tuple[str, ...] | None:
    """The values a Literal (or optional Literal) allows, as text; None for any other type."""
    if get_origin(annotation) is Literal:
        return tuple(str(value) for value in get_args(annotation))
    for member in get_args(annotation) if get_origin(annotation) in {Union, UnionType} else ():
        values = closed_set(member)
        if values is not None:
            return values
    return None


def decode_strictly(decoder: msgspec.json.Decoder[T], body: bytes, model: Any = None) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as invalid:
        message = str(invalid)
        unknown = _UNKNOWN.search(message)
        missing = _MISSING.search(message)
        if unknown:
            raise ValidationFailed(unknown.group(1), "unknown field (not part of this request)") from None
        if missing:
            raise ValidationFailed(missing.group(1), "is required") from None
        path = _PATH.search(message)
        field = (path.group(1) if path else "") or "body"
        allowed = closed_set(get_type_hints(model).get(field)) if model is not None and "enum" in message else None
        if allowed is not None:
            raise ValidationFailed(field, one_of(allowed), allowed=allowed) from None
        raise ValidationFailed(field, _PATH.sub("", message)) from None
    except msgspec.DecodeError as malformed:
        raise ValidationFailed("body", f"malformed JSON: {malformed}") from None


class StrictBody(MsgspecDTO[S], Generic[S]):
    def decode_bytes(self, value: bytes) -> Any:
        handler = self.asgi_connection.route_handler
        decoder = _decoders.get(handler)
        if decoder is None:
            model = handler.parsed_fn_signature.parameters["data"].annotation
            decoder = _decoders[handler] = msgspec.json.Decoder(model)
        return decode_strictly(decoder, value, handler.parsed_fn_signature.parameters["data"].annotation)

    @classmethod
    def create_openapi_schema(cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any) -> Any:
        # The Struct's own schema (its name, bounds and additionalProperties), not a generated transfer model.
        return schema_creator.for_field_definition(FieldDefinition.from_annotation(field_definition.annotation))


# Set on the app: every Struct body goes through it; responses are encoded as they are.
STRICT_BODY = StrictBody[msgspec.Struct]
