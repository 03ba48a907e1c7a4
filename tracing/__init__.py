"""Loomview's span pipeline: a Django app.

OTLP decoding and the receiver, the span store, correlation with Temporal
histories, and forwarding to collectors. The worker-side half (OpenTelemetry
setup, the Agents SDK bridge, redaction, the vocabulary) is ``telemetry``,
which never imports Django.
"""
