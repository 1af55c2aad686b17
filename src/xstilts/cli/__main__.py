"""``python -m xstilts`` = the ``xstilts`` command (also usable under ``accelerate launch -m``)."""

from xstilts.cli import main

if __name__ == "__main__":
    main()
