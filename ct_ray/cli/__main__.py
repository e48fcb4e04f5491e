"""``python -m ct_ray.cli``: the same as the ``ct-ray`` command."""
import sys

from ct_ray.cli import main

sys.exit(main())
