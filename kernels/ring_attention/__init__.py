from kernels.ring_attention.reference import ring_attention_reference, rope_cos_sin, rotate

__all__ = ["ring_attention_reference", "rope_cos_sin", "rotate"]
