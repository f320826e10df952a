from .reference import RingPlan, plan_ring, ring_attention_reference

__all__ = ["RingPlan", "plan_ring", "ring_attention_reference"]
