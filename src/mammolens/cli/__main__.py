import sys

from mammolens.cli import main

sys.exit(main())
