"""`sepcli serve`: an OpenAI-compatible HTTP server whose conversations live on fixed rings.

One request's path, top to bottom:

1. :mod:`~sepcli.serve.app` (Starlette on uvicorn) checks the API key and the body size and
   reads the JSON; :mod:`~sepcli.serve.wire` turns it into a checked request (or an OpenAI
   error object with its status) and later renders replies, chunks and usage.
2. :mod:`~sepcli.serve.scheduler` queues the request as a job and runs every job on one model
   thread, a step (a prefill chunk or one token) of each in turn, so all clients progress.
3. :mod:`~sepcli.serve.jobs` is what a job does: a chat turn continues the conversation that
   :mod:`~sepcli.serve.sessions` finds for the request's history (only the new message is fed)
   or reads the history afresh; a completion runs a prompt through a fresh ring.
4. :mod:`~sepcli.serve.sessions` keeps at most ``--sessions`` conversations in memory and
   writes the others to ``--session-dir`` as chat checkpoints.
"""
