"""The bundled generation worker: a real HTTP service rendering short MP4s, with fault injection."""

from generation_client.worker.app import create_app, serve
from generation_client.worker.settings import WorkerSettings

__all__ = ["WorkerSettings", "create_app", "serve"]
