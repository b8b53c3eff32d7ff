"""HTTP service and web page: ``create_app(model)`` builds it, ``serve(...)`` runs it."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
