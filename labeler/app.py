"""The documented entry points of the HTTP service, kept stable while the code lives in
``labeler.service``: ``python -m labeler.app`` and ``uvicorn --factory labeler.app:create_app``."""

from labeler.service.app import create_app
from labeler.service.cli import main

__all__ = ["create_app", "main"]

if __name__ == "__main__":
    main()
