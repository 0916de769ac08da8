"""``python -m voicebridge``: see :mod:`voicebridge.cli`."""

from voicebridge.cli import main

raise SystemExit(main())
