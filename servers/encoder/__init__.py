"""The encoder tenant: FastAPI + uvicorn + sentence-transformers in its own process.

Run it with ``python -m servers.encoder --model PATH --served-name NAME --port P``; build
the app in-process with ``create_app(load_encoder(path), EncoderSettings(...))``.
"""

from servers.encoder.api import ApiError
from servers.encoder.app import EncoderSettings, create_app
from servers.encoder.batcher import MicroBatcher, QueueFull
from servers.encoder.model import EncoderModel, load_encoder

__all__ = [
    "ApiError",
    "EncoderModel",
    "EncoderSettings",
    "MicroBatcher",
    "QueueFull",
    "create_app",
    "load_encoder",
]
