"""``python -m service.batch``: see :mod:`service.batch.cli`."""

from service.batch.cli import main

raise SystemExit(main())
