import sys

from icpcv.cli import main

sys.exit(main())
