import sys

from roastq.simulator.server import main

sys.exit(main())
