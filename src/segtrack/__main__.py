import sys

from segtrack.cli import main

sys.exit(main())
