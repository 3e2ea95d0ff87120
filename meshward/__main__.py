import sys

from meshward.cli import main

sys.exit(main())
