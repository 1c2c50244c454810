"""Alembic environment: runs on the connection handed over by storage.index.db.upgrade()."""

from alembic import context
from sqlalchemy import create_engine

from storage.index.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from the command line
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic: set sqlalchemy.url to the index database")
    engine = create_engine(url)
    connection = engine.connect()
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
