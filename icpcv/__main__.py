import sys

from icpcv.commands import main

sys.exit(main())
