"""The hub's Alembic migrations, shipped inside the package.

Nothing here needs an ``alembic.ini``: :mod:`cloud_hub.db.migrate` builds the Alembic
configuration in code and hands ``env.py`` an open connection. To add a migration after
changing :mod:`cloud_hub.db.models`, from a source checkout::

    cloud-hub --data-dir /tmp/mig db upgrade
    cloud-hub --data-dir /tmp/mig db revision --message "what changed"

then read and tidy the generated file in ``versions/``; ``tests/test_hub_db.py`` fails
until the migrations and the models agree on SQLite and PostgreSQL.
"""
