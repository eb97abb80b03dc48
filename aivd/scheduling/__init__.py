"""Which edge node inspects each image: pure policies shared by the simulator and the runtimes."""

from aivd.scheduling.policies import (
    POLICIES,
    AivdConfig,
    AivdScore,
    Policy,
    PolicyConfig,
    expected_completion_s,
    make_policy,
    waits_for_room,
)
from aivd.scheduling.state import NodeState, Task

__all__ = ["POLICIES", "AivdConfig", "AivdScore", "NodeState", "Policy", "PolicyConfig", "Task", "expected_completion_s", "make_policy",
           "waits_for_room"]
