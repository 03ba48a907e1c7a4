"""The bundled Loomview worker: instrumented agent workflows on Temporal.

Never imports Django: it runs in its own process, next to or far from the dashboard.
"""
