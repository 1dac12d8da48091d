"""rotator: secret-rotation orchestration.

`celery -A rotator ...` finds the Celery app here once the worker exists.
"""

from __future__ import annotations

__version__ = "0.1.0"
