"""ASGI entry point of the compose stack: the example app on the database its replicas share.

``examples.fastapi_app.app.create_app`` uses a private in-memory SQLite database by
default; each replica of the stack would then load from its own copy, and a price written
through one replica would be read back from the other's stale rows. ``DATABASE_URL``
points both replicas at one SQLite file on a shared volume instead.
"""

from __future__ import annotations

import os

from examples.fastapi_app.app import IN_MEMORY, create_app

app = create_app(database_url=os.environ.get("DATABASE_URL", IN_MEMORY))
