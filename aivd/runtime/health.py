"""What the deployments' `check_health` looks at besides their own models: the handle a replica holds on the
next deployment (the ingress's on the edge, the edge's on the cloud).

A replica is reported unhealthy when replacing it would help. A handle whose calls fail while a fresh handle on
the same deployment gets an answer is dead in this replica (its router stopped, say): a new replica gets a new
one. When the fresh handle fails too, the deployment behind it is down or overloaded; its own `check_health`
reports that, and this replica stays healthy, serving what it can (an edge replica: the edge's results, marked
with `cloud_error`). The handle is probed only after one of its calls failed, so a working service pays nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayTaskError

PROBE = "describe"  # every deployment a handle reaches here answers it at once, without touching its model


class HandleHealth:
    def __init__(self, handle: Any, fresh: Callable[[], Any], deployment: str, timeout_s: float) -> None:
        self.handle, self.fresh = handle, fresh
        self.deployment, self.timeout_s = deployment, timeout_s
        self.suspect = False  # a call failed in the handle rather than in the deployment's code

    def called(self, error: BaseException | None) -> None:
        """Note a call's outcome. An error the deployment's own code raised came through a working handle."""
        self.suspect = error is not None and not isinstance(error, RayTaskError)

    async def check(self) -> None:
        """Raises RuntimeError when this handle fails and a fresh one on the same deployment does not."""
        if not self.suspect:
            return
        if await self._answers(self.handle):
            self.suspect = False
            return
        if await self._answers(self.fresh()):
            raise RuntimeError(f"the handle on the {self.deployment} deployment fails while a fresh handle reaches it")

    async def _answers(self, handle: Any) -> bool:
        try:
            await asyncio.wait_for(_awaited(getattr(handle, PROBE).remote()), self.timeout_s)
        except Exception:  # any failure: no answer from the deployment through this handle
            return False
        return True


async def _awaited(response: Any) -> Any:
    return await response
