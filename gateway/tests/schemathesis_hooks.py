"""Schemathesis hooks for the gateway's contract test: tus bodies
(`application/offset+octet-stream`) are bytes on the wire, as `application/octet-stream` is."""

import schemathesis
from schemathesis.transport.requests import binary_serializer

schemathesis.serializer("application/offset+octet-stream")(binary_serializer)
