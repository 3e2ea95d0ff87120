import sys

from meshward.app.cli import main

sys.exit(main())
