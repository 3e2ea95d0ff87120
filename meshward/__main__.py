import sys

from meshward.app.cli import main

if __name__ == "__main__":  # not again in a spawned worker process (meshward/app/ingest.py)
    sys.exit(main())
