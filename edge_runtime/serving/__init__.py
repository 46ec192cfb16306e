"""The Open Inference Protocol (KServe V2) transports: one core (dataplane.py), thin
gRPC and REST servers on top, and the converters between wire and core."""
