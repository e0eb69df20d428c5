"""fieldsync's wire protocol: sans-I/O core (bytes in, events out).

The core imports no trio, sockets, ssl, sqlite3 or serial; the trio Stream
adapters live in ``protocol.streams``, which the core never imports.
"""

from ._batch import alarms_in as alarms_in
from ._batch import check_alarm_records as check_alarm_records
from ._batch import check_records as check_records
from ._batch import iter_rows as iter_rows
from ._batch import pack_records as pack_records
from ._codec import config_digest as config_digest
from ._codec import decode_payload as decode_payload
from ._codec import encode_config_op as encode_config_op
from ._codec import encode_payload as encode_payload
from ._codec import message_type as message_type
from ._config import AccessLevel as AccessLevel
from ._config import Cardholder as Cardholder
from ._config import ConfigOp as ConfigOp
from ._config import DeleteAccessLevel as DeleteAccessLevel
from ._config import DeleteCardholder as DeleteCardholder
from ._config import DeleteSchedule as DeleteSchedule
from ._config import Door as Door
from ._config import DoorMode as DoorMode
from ._config import Interval as Interval
from ._config import LevelEntry as LevelEntry
from ._config import PutAccessLevel as PutAccessLevel
from ._config import PutCardholder as PutCardholder
from ._config import PutDoor as PutDoor
from ._config import PutSchedule as PutSchedule
from ._config import Schedule as Schedule
from ._connection import NEED_DATA as NEED_DATA
from ._connection import ConfigPush as ConfigPush
from ._connection import ConnectionClosed as ConnectionClosed
from ._connection import ConnectionStatistics as ConnectionStatistics
from ._connection import HostConnection as HostConnection
from ._connection import NeedData as NeedData
from ._connection import PanelConnection as PanelConnection
from ._errors import ErrorCode as ErrorCode
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import PeerTimeout as PeerTimeout
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._framing import DEFAULT_MAX_PAYLOAD as DEFAULT_MAX_PAYLOAD
from ._framing import FRAME_OVERHEAD as FRAME_OVERHEAD
from ._framing import Frame as Frame
from ._framing import FrameDecoder as FrameDecoder
from ._framing import FrameStatistics as FrameStatistics
from ._framing import encode_frame as encode_frame
from ._messages import EMPTY_DIGEST as EMPTY_DIGEST
from ._messages import MAX_SEQ as MAX_SEQ
from ._messages import Ack as Ack
from ._messages import Alarm as Alarm
from ._messages import AlarmAck as AlarmAck
from ._messages import Bye as Bye
from ._messages import ConfigAck as ConfigAck
from ._messages import ConfigDelta as ConfigDelta
from ._messages import ConfigSnapshot as ConfigSnapshot
from ._messages import Error as Error
from ._messages import EventBatch as EventBatch
from ._messages import Heartbeat as Heartbeat
from ._messages import Hello as Hello
from ._messages import Message as Message
from ._messages import MessageType as MessageType
from ._messages import Standby as Standby
from ._messages import Takeover as Takeover
from ._messages import Welcome as Welcome
from ._records import ALARM_KIND_BYTES as ALARM_KIND_BYTES
from ._records import ALARM_KINDS as ALARM_KINDS
from ._records import GAP_KINDS as GAP_KINDS
from ._records import RECORD_SIZE as RECORD_SIZE
from ._records import RECORD_STRUCT as RECORD_STRUCT
from ._records import EventFlags as EventFlags
from ._records import EventKind as EventKind
from ._records import EventRecord as EventRecord
from ._state import TRANSITIONS as TRANSITIONS
from ._state import Direction as Direction
from ._state import Role as Role
from ._state import State as State
from ._wire import PROTOCOL_VERSION as PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "EMPTY_DIGEST",
    "FRAME_OVERHEAD",
    "ALARM_KINDS",
    "ALARM_KIND_BYTES",
    "GAP_KINDS",
    "MAX_SEQ",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "RECORD_SIZE",
    "RECORD_STRUCT",
    "TRANSITIONS",
    "AccessLevel",
    "Ack",
    "Bye",
    "Cardholder",
    "ConfigAck",
    "ConfigDelta",
    "ConfigOp",
    "ConfigPush",
    "ConfigSnapshot",
    "ConnectionClosed",
    "ConnectionStatistics",
    "DeleteAccessLevel",
    "DeleteCardholder",
    "DeleteSchedule",
    "Direction",
    "Door",
    "DoorMode",
    "Error",
    "ErrorCode",
    "Alarm",
    "AlarmAck",
    "EventBatch",
    "EventFlags",
    "EventKind",
    "EventRecord",
    "Frame",
    "FrameDecoder",
    "FrameStatistics",
    "Heartbeat",
    "Hello",
    "HostConnection",
    "Interval",
    "LevelEntry",
    "LocalProtocolError",
    "Message",
    "MessageType",
    "NeedData",
    "PanelConnection",
    "PeerTimeout",
    "ProtocolError",
    "PutAccessLevel",
    "PutCardholder",
    "PutDoor",
    "PutSchedule",
    "RemoteProtocolError",
    "Role",
    "Schedule",
    "Standby",
    "State",
    "Takeover",
    "Welcome",
    "alarms_in",
    "check_alarm_records",
    "check_records",
    "config_digest",
    "decode_payload",
    "encode_config_op",
    "encode_payload",
    "encode_frame",
    "iter_rows",
    "message_type",
    "pack_records",
]
