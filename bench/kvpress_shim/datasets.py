"""Import shim: kvpress's DuoAttentionPress imports load_dataset at module level; SnapKV never calls it."""


def load_dataset(*args, **kwargs):
    raise RuntimeError("datasets is not installed in this benchmark environment")
