import sys

from roastq.cli.main import main

sys.exit(main())
