"""``python -m labeler.standin``."""

from labeler.standin.runners import main

if __name__ == "__main__":
    main()
