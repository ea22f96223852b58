"""`python -m rapidpose`: the rapidpose command."""
import sys

from rapidpose.cli import main

sys.exit(main())
