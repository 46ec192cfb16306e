"""The fleet gateway: the gRPC server edge runtimes dial (edgefleet.v1.FleetGateway)."""
