"""A FastAPI service with a SQLite database behind coherent_cache (see ``app.py``)."""
