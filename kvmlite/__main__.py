import sys

from kvmlite.cli.main import main

sys.exit(main())
