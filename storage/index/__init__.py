"""The index: SQLAlchemy models and the database engine (schema managed by alembic)."""
