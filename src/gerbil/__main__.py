import sys

from gerbil.cli import main

sys.exit(main())
