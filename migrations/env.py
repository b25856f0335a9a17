"""Alembic environment: runs migrations against the project's database.

URL precedence: ``alembic -x url=...``, then a ``sqlalchemy.url`` set on the Config by code
(``app.db.migrate``, tests), then ``DATABASE_URL`` through the settings. SQLite needs batch mode
(it cannot ALTER most things in place) and uses the project's engine, so migrations run under the
same WAL / busy-timeout / BEGIN IMMEDIATE rules as the service.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from app.core.config import get_settings
from app.db.models import Base  # importing the package registers every table on the metadata
from app.db.session import create_engine_for

config = context.config
target_metadata = Base.metadata

# The alembic CLI gets the ini's log format; code that runs migrations in-process
# (app.db.migrate) keeps its own logging setup.
if config.config_file_name and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """The URL to migrate, by the precedence in the module docstring."""
    from_cli = context.get_x_argument(as_dictionary=True).get("url")
    if from_cli:
        return from_cli
    from_config = config.get_main_option("sqlalchemy.url")
    if from_config:
        return from_config
    return get_settings().database_url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # The SQLite engine emits its own BEGIN IMMEDIATE, which makes DDL transactional there
        # too: a failed migration leaves no half-built schema behind.
        transactional_ddl=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations in one transaction on a live connection."""
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine_for(database_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
