import sys

from camseg.app.cli import main

sys.exit(main())
