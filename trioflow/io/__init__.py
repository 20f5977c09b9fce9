"""Sources and sinks that talk to the outside world: ``tcp_source`` (a TCP server as a
push source, ``docs/tcp.md``).

    import trioflow.io as tfio
    flow = tfio.tcp_source(9000, host="127.0.0.1", decode=json.loads)
"""

from ._framing import FrameError as FrameError
from ._framing import Framer as Framer
from ._framing import Framing as Framing
from ._framing import LengthPrefixed as LengthPrefixed
from ._framing import Lines as Lines
from ._tcp import ConnectionInfo as ConnectionInfo
from ._tcp import Received as Received
from ._tcp import Rejected as Rejected
from ._tcp import Replies as Replies
from ._tcp import TcpServer as TcpServer
from ._tcp import TcpStatistics as TcpStatistics
from ._tcp import tcp_source as tcp_source

__all__ = [
    "ConnectionInfo",
    "FrameError",
    "Framer",
    "Framing",
    "LengthPrefixed",
    "Lines",
    "Received",
    "Rejected",
    "Replies",
    "TcpServer",
    "TcpStatistics",
    "tcp_source",
]
