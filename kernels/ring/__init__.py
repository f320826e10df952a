from kernels.ring.reference import (
    RingPlan,
    plan_ring,
    ring_attention_reference,
    rope_cos_sin,
    rotate,
)

__all__ = ["RingPlan", "plan_ring", "ring_attention_reference", "rope_cos_sin", "rotate"]
