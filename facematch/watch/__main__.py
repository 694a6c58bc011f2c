"""``python -m facematch.watch --source SRC --gallery G --camera NAME`` (docs/watch.md)."""

import sys

from facematch.watch.run import main

sys.exit(main())
