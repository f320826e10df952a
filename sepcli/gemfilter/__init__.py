"""GemFilter document QA (Shi et al., arXiv 2409.17422): read the document with the early layers
only, keep the tokens the last prompt token attends to, answer from those with the full model.

Data flow, top to bottom: ``prompt`` (chat template, document then question) -> ``segments``
and ``prefix`` (the filter pass: layers < r over the head + document, then over the question,
scores at layer r) -> ``selection`` (top-k tokens or sentences) -> ``generate`` (full model on
the selection) -> ``pipeline`` (timings, memory, events for the CLI). ``reading`` keeps a
document's prefix for many questions, ``doc_cache`` stores it on disk. ``calibrate`` finds r
per model on the synthetic needles of ``needles``.
"""
