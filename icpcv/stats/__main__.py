"""``python -m icpcv.stats analyze|calibrate ...`` (same options as the project CLI)."""

from icpcv.stats.commands import main

raise SystemExit(main())
