"""How SepLLM should split a fixed capacity between separators and the local window.

    python bench/stream_budget.py [--tokens 3000]

Runs the engine on the first N tokens of the bundled essays for several (s, w) splits of
c=324 (a=4), and StreamingLLM 4+320 token by token, and prints one JSON line each. SepLLM's
chunked runs are exact (pieces are cut at compressions), so their chunk size does not matter.
"""

from __future__ import annotations

import argparse
import json
import math

from sepcli.models import load_model
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine

from common import essay_ids

SPLITS = [
    dict(init=4, sep=64, window=224, capacity=324),  # the default
    dict(init=4, sep=32, window=256, capacity=324),
    dict(init=4, sep=16, window=288, capacity=324),
    dict(init=4, sep=128, window=160, capacity=324),
    dict(method="streamingllm", init=4, capacity=324),  # exact at any chunk
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=3000)
    args = ap.parse_args()
    lm = load_model("smollm2")
    ids = essay_ids(lm.tokenizer, args.tokens)
    separators = separator_mask(lm.tokenizer)
    for split in SPLITS:
        engine = StreamEngine(lm.model, StreamConfig(**split), separators)
        scored = nll = 0.0
        for piece in engine.run([ids]):
            scored += piece.scored
            nll += piece.nll_sum
        print(json.dumps({**split, "tokens": int(scored), "ppl": round(math.exp(nll / scored), 3)}))


if __name__ == "__main__":
    main()
