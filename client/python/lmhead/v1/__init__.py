"""Generated gRPC stubs (lmhead_pb2, lmhead_pb2_grpc), written here when the package is built."""
