import sys

from mammolens.pacs.command import main

sys.exit(main())
