"""``python -m coat_model.train [options]``: the training command line (:mod:`coat_model.train.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
