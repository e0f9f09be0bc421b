import sys

from ipfsreg.cli import main

sys.exit(main())
