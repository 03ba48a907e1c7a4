"""What the worker and the dashboard share, without Django.

The worker's OpenTelemetry setup (``telemetry.otel``), the Agents SDK → OTel
bridge (``telemetry.agents_bridge``), redaction (``telemetry.redact``) and the
one vocabulary of attribute names, aliases and kinds (``telemetry.vocab``).
Nothing in this package imports Django; a test proves it.
"""
