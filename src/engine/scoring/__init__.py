"""gRPC servicers: decode, validate, batch, encode."""
