"""``python -m vosrt ...``: the ``vosrt`` command, for an environment whose scripts folder is not on PATH."""
from vosrt.cli import main

raise SystemExit(main())
