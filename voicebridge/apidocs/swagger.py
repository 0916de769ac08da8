"""The Swagger UI page at ``/docs``, served entirely by this server.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package (the official
``swagger-ui-dist`` build, repackaged; Swagger UI 5, the first to read OpenAPI 3.1), and
only those the page uses are served, under ``/docs/static/``. The initializer is a file
of its own rather than an inline script, so the page's Content-Security-Policy can
allow scripts from this server only.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Final

import attrs
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from voicebridge import __version__

#: Where Swagger UI's files are.
SWAGGER_UI_DIR: Final = Path(str(swagger_ui_path))
ASSET_PREFIX: Final = "/docs/static/"
ASSET_PATH: Final = ASSET_PREFIX + "{name}"

#: For the Swagger UI page and the plain reference: nothing loads from elsewhere, no
#: inline script or style, nothing frames them. ``data:`` images are Swagger UI's icons.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_INITIALIZER: Final = """\
// voicebridge: start Swagger UI on this server's OpenAPI document. A file of its own, not
// an inline script: the page's Content-Security-Policy allows scripts from this server only.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // No badge fetched from validator.swagger.io: the page loads nothing from elsewhere.
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
});
"""

_STYLE: Final = """\
/* voicebridge: the bar above Swagger UI, and the plain reference page (/docs/protocol). */
body{margin:0;font:15px/1.5 system-ui,sans-serif;color:#1d2430}
.vb-bar{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:baseline;
padding:.75rem 1.25rem;border-bottom:1px solid #dde3ea;background:#f6f8fa}
.vb-bar h1{font-size:1.1rem;margin:0}
.vb-bar nav a{margin-right:1rem}
.vb-ref{max-width:64rem;margin:2rem auto;padding:0 1rem}
.vb-ref table{border-collapse:collapse;width:100%;margin:1rem 0}
.vb-ref td,.vb-ref th{border-bottom:1px solid #dde3ea;padding:.4rem .6rem;text-align:left;
vertical-align:top}
.vb-ref code{font-size:.9em}
.vb-ref h1{margin-bottom:0}
"""


@attrs.frozen
class Asset:
    """One file the page loads: from the Swagger UI package, or written here."""

    content_type: str
    file: Path | None = None
    text: str | None = None


#: Exactly the files served under ``/docs/static/`` (nothing else of the package: its
#: sample index.html and initializer point at a public demo API).
ASSETS: Final[dict[str, Asset]] = {
    "swagger-ui.css": Asset("text/css", file=SWAGGER_UI_DIR / "swagger-ui.css"),
    "swagger-ui-bundle.js": Asset("text/javascript", file=SWAGGER_UI_DIR / "swagger-ui-bundle.js"),
    "favicon-32x32.png": Asset("image/png", file=SWAGGER_UI_DIR / "favicon-32x32.png"),
    "favicon-16x16.png": Asset("image/png", file=SWAGGER_UI_DIR / "favicon-16x16.png"),
    "swagger-initializer.js": Asset("text/javascript", text=_INITIALIZER),
    "voicebridge-docs.css": Asset("text/css", text=_STYLE),
}
ASSET_NAMES: Final = tuple(ASSETS)


def nav_bar(title: str) -> str:
    """The bar at the top of both pages: the documents and the other page."""
    return (
        f'<header class="vb-bar"><h1>{escape(title)}</h1><nav aria-label="API documents">'
        '<a href="/docs">HTTP routes (Swagger UI)</a>'
        '<a href="/docs/protocol">Plain reference: routes, WebSocket messages, codes</a>'
        '<a href="/openapi.json">OpenAPI 3.1 (JSON)</a>'
        '<a href="/asyncapi.yaml">WebSocket protocol: AsyncAPI 3.0 (YAML)</a>'
        "</nav></header>"
    )


def _head(title: str, *styles: str) -> str:
    links = "".join(f'<link rel="stylesheet" href="{ASSET_PREFIX}{s}">' for s in styles)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" type="image/png" sizes="32x32" href="{ASSET_PREFIX}favicon-32x32.png">'
        f'<link rel="icon" type="image/png" sizes="16x16" href="{ASSET_PREFIX}favicon-16x16.png">'
        f"{links}</head>"
    )


def render_swagger_page(fallback: str) -> str:
    """The Swagger UI page; ``fallback`` (HTML) is shown where JavaScript does not run."""
    title = f"voicebridge API {__version__}"
    return (
        _head(title, "swagger-ui.css", "voicebridge-docs.css")
        + "<body>"
        + nav_bar(title)
        + '<main id="swagger-ui"></main>'
        + f'<noscript><div class="vb-ref">{fallback}</div></noscript>'
        + f'<script src="{ASSET_PREFIX}swagger-ui-bundle.js"></script>'
        + f'<script src="{ASSET_PREFIX}swagger-initializer.js"></script>'
        + "</body></html>"
    )


def render_plain_page(title: str, body: str) -> str:
    """A page of the plain reference, styled by this server's own style sheet."""
    return (
        _head(title, "voicebridge-docs.css")
        + "<body>"
        + nav_bar(title)
        + f'<main class="vb-ref">{body}</main></body></html>'
    )
