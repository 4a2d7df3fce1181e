import sys

from wattwise.cli import main

sys.exit(main())
