"""Tracing for Loomview.

Worker side (no Django): ``tracing.otel`` configures OpenTelemetry and
``tracing.agents_bridge`` turns Agents SDK spans into OTel spans. Dashboard side
(a Django app): OTLP decoding, the span store, the receiver and correlation.
This package's ``__init__`` must not import Django.
"""
