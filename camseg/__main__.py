import sys

from camseg.cli import main

sys.exit(main())
