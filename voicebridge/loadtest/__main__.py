"""``python -m voicebridge.loadtest``: see :func:`voicebridge.loadtest.runner.cli`."""

import sys

from voicebridge.loadtest.runner import cli

sys.exit(cli())
