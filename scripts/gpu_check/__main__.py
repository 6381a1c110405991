"""Entry point: ``python scripts/gpu_check ...`` (a folder with a __main__.py) or ``python -m gpu_check`` with
scripts/ on the path.

Run as a folder, Python puts this folder itself first on sys.path; it is replaced by its parent so that the
kit is imported as the package ``gpu_check`` (its modules use relative imports) and none of its module names
(``cli``, ``common``, ``steps`` ...) can shadow another top-level module.
"""

import sys
from pathlib import Path

if not __package__:
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from gpu_check.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
