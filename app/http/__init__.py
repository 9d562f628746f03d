"""The HTTP layer: app factory, routes, errors, middleware and response schemas."""

from app.http.app import create_app

__all__ = ["create_app"]
