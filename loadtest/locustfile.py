"""Locust load test of the TradeScore engine's gRPC API (loadtest/README.md).

    locust --config loadtest/locust.conf --host 127.0.0.1:50051 --load-profile close --run-time 3m

gRPC is switched to gevent here, before anything creates a channel: Locust runs
users as greenlets, and a blocking gRPC call must park only its own greenlet.
"""

from grpc.experimental import gevent as grpc_gevent  # type: ignore[attr-defined]  # not in grpc-stubs

grpc_gevent.init_gevent()

from locust import events  # noqa: E402 - after gRPC's gevent set-up
from tradescore_locust.hooks import register  # noqa: E402
from tradescore_locust.shapes import ProfileShape  # noqa: E402
from tradescore_locust.users import OmsUser, StreamGatewayUser  # noqa: E402

register(events)

__all__ = ["OmsUser", "ProfileShape", "StreamGatewayUser"]
