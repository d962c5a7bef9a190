"""`python -m tvm_observability.demo`: see fleet_demo.py."""

from __future__ import annotations

import sys

from .fleet_demo import main

sys.exit(main())
