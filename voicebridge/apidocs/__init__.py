"""Machine-readable descriptions of the API, built from Python data.

:mod:`.openapi` describes every HTTP route (OpenAPI 3.1, served as ``/openapi.json``),
:mod:`.asyncapi` the ``/ws/voice`` WebSocket protocol (AsyncAPI 3.0, ``/asyncapi.yaml``),
:mod:`.swagger` the Swagger UI page at ``/docs``, whose assets come from the
``swagger-ui-bundle-v2`` package and are served by this server (no CDN). Codes, limits and
the version are read from the modules that define them, so the documents follow the
code; ``tests/test_api_docs.py`` fails when a route or message is served but not
described.
"""

from __future__ import annotations

from voicebridge.apidocs.asyncapi import asyncapi_document, asyncapi_yaml
from voicebridge.apidocs.openapi import openapi_document

__all__ = ["asyncapi_document", "asyncapi_yaml", "openapi_document"]
