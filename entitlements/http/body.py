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
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE
from litestar.typing import FieldDefinition

from entitlements.errors import ValidationFailed, one_of

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_INTEGRAL_FLOAT = re.compile(r"Expected `int[^`]*`, got `float`")
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
        failure = invalid
        if _INTEGRAL_FLOAT.search(str(invalid)):
            # JSON has one number type: 13.0 is the integer 13 (as JSON Schema, and so the contract, says),
            # while 13.5 stays a float and is refused. Only this refusal pays for a second decode.
            whole = _whole_numbers(body)
            if whole is not None:
                try:
                    return msgspec.convert(whole, decoder.type, strict=True)
                except msgspec.ValidationError as still_invalid:
                    failure = still_invalid
        raise _validation_failed(failure, model) from None
    except msgspec.DecodeError as malformed:
        raise ValidationFailed("body", f"malformed JSON: {malformed}") from None
    except UnicodeDecodeError:
        # msgspec checks UTF-8 only when it builds a string: a client's bytes, never a server error.
        raise ValidationFailed("body", "is not valid UTF-8") from None


def _validation_failed(invalid: msgspec.ValidationError, model: Any) -> ValidationFailed:
    message = str(invalid)
    unknown = _UNKNOWN.search(message)
    missing = _MISSING.search(message)
    if unknown:
        return ValidationFailed(unknown.group(1), "unknown field (not part of this request)")
    if missing:
        return ValidationFailed(missing.group(1), "is required")
    path = _PATH.search(message)
    field = (path.group(1) if path else "") or "body"
    allowed = closed_set(get_type_hints(model).get(field)) if model is not None and "enum" in message else None
    if allowed is not None:
        return ValidationFailed(field, one_of(allowed), allowed=allowed)
    return ValidationFailed(field, _PATH.sub("", message))


def _whole_numbers(body: bytes) -> Any:
    """The body as plain values with every integral float made an int; None if it does not decode. Walked
    without recursion: a deeply nested body is bad input, not a stack overflow."""
    try:
        root: Any = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    pending: list[Any] = [root]
    while pending:
        container = pending.pop()
        keys = range(len(container)) if isinstance(container, list) else list(container)
        for key in keys:
            value = container[key]
            if isinstance(value, float) and value.is_integer():
                container[key] = int(value)
            elif isinstance(value, dict | list):
                pending.append(value)
    if isinstance(root, float) and root.is_integer():
        return int(root)
    return root


def is_json_media_type(content_type: str) -> bool:
    """application/json, or any `+json` type (application/merge-patch+json), parameters aside."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class StrictBody(MsgspecDTO[S], Generic[S]):
    def decode_bytes(self, value: bytes) -> Any:
        # A body sent as something other than JSON is refused as such (415), not parsed as JSON anyway; a
        # client that names no type is taken at its word that the body is the JSON the contract asks for.
        content_type = self.asgi_connection.headers.get("content-type")
        if content_type is not None and not is_json_media_type(content_type):
            raise HTTPException(
                status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                detail=f"the body must be application/json, not {content_type[:100]}",
            )
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
