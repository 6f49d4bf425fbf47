"""The HTTP service: ``medseg serve BUNDLE`` (FastAPI). See :mod:`medseg.serve.app`."""

from medseg.serve.app import create_app
from medseg.serve.config import ServeConfig, check_bind, load_token

__all__ = ["ServeConfig", "check_bind", "create_app", "load_token"]
