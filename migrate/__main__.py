"""``python -m posthog_migrate`` is the same as the ``posthog-migrate`` command."""

from posthog_migrate.entry import main

main()
