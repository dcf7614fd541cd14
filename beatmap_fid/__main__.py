"""`python -m beatmap_fid` runs the command-line interface."""

from beatmap_fid.cli import main

raise SystemExit(main())
