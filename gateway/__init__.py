"""The gateway: OIP over HTTP and gRPC in front of the runtime workers."""
