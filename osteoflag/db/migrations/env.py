"""Alembic environment: runs against the engine handed in by ``osteoflag.db.engine``.

On SQLite, batch mode rebuilds a table by copying it and dropping the original; with foreign
keys on, that drop would first delete its rows, and ``ON DELETE SET NULL`` would unlink every
event and outbound object from its instance. Foreign keys are therefore off while migrating
(SQLite ignores the pragma inside a transaction, so it is set before one begins).
"""

from alembic import context

from osteoflag.db.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
