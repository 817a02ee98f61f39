"""The function wire protocol: how functions are named, reached, launched and called.

Shared by the caller's side (`torpor.sdk`, `torpor.functions`), the server's side (the
gateway, the function engine) and the function server in the worker, so it imports nothing
but the standard library (the worker runs it in the image's environment) and nothing of
torpor: `routes` (paths, names, the worker's spec), `pickling` (JSON or cloudpickle calls).
"""
