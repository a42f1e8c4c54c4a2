"""TradeScore engine: gRPC scoring for settlement-fail risk and sync breaks."""

__version__ = "0.1.0"
