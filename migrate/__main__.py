"""``python -m migrate`` is the same as the ``posthog-migrate`` command."""

from migrate.entry import main

main()
