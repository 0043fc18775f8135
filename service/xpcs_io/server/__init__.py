"""The xpcs-io HTTP service: ``create_app(settings)`` builds the FastAPI application."""

from xpcs_io.server.app import create_app

__all__ = ["create_app"]
