"""The aggregator's command on asyncio's event loop even where uvloop is installed: `import uvloop` fails in this
process, so the CLI takes asyncio's loop (test_service.py runs a plain-HTTP port on both loops)."""

from __future__ import annotations

import sys

sys.modules["uvloop"] = None  # type: ignore[assignment]

from tvm_observability.aggregator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
