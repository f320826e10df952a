"""Model weights below :mod:`sepcli.models`: GGUF files read in their own blocks
(:mod:`.gguf_file`, :mod:`.gguf_model`, the layers in :mod:`.blocks`), HF checkpoints read shard
by shard into the int8 path (:mod:`.hf_int8`), and what a model will need in memory
(:mod:`.estimate`)."""
