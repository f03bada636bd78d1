"""`python -m tensorgate` is the `tensorgate` command."""

from tensorgate.cli import main

raise SystemExit(main())
