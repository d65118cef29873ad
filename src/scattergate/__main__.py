import sys

from scattergate.cli import main

sys.exit(main())
