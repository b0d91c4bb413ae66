from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_RAW: _ClassVar[Encoding]
    ENCODING_KEY: _ClassVar[Encoding]
    ENCODING_BF16_DELTA: _ClassVar[Encoding]
    ENCODING_INT8: _ClassVar[Encoding]
    ENCODING_TOPK: _ClassVar[Encoding]
    ENCODING_TOPK_SPANS: _ClassVar[Encoding]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
BFLOAT16: DType
FLOAT16: DType
ENCODING_RAW: Encoding
ENCODING_KEY: Encoding
ENCODING_BF16_DELTA: Encoding
ENCODING_INT8: Encoding
ENCODING_TOPK: Encoding
ENCODING_TOPK_SPANS: Encoding

class Header(_message.Message):
    __slots__ = ("federation", "sender", "step", "round", "layout_digest", "dtype", "element_count", "shard_count", "encoding", "copy_version", "block_elements", "value_count", "part", "parts")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    COPY_VERSION_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    federation: str
    sender: str
    step: int
    round: int
    layout_digest: str
    dtype: DType
    element_count: int
    shard_count: int
    encoding: Encoding
    copy_version: int
    block_elements: int
    value_count: int
    part: int
    parts: int
    def __init__(self, federation: _Optional[str] = ..., sender: _Optional[str] = ..., step: _Optional[int] = ..., round: _Optional[int] = ..., layout_digest: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., element_count: _Optional[int] = ..., shard_count: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., copy_version: _Optional[int] = ..., block_elements: _Optional[int] = ..., value_count: _Optional[int] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("index", "checksum", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    checksum: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., checksum: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("header", "shard", "manifest")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    header: Header
    shard: Shard
    manifest: StateManifest
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., shard: _Optional[_Union[Shard, _Mapping]] = ..., manifest: _Optional[_Union[StateManifest, _Mapping]] = ...) -> None: ...

class PushSummary(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: int
    def __init__(self, messages: _Optional[int] = ...) -> None: ...

class HelloRequest(_message.Message):
    __slots__ = ("federation", "sender")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    federation: str
    sender: str
    def __init__(self, federation: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("federation", "peer_id", "protocol_version", "layout_digest", "element_count", "step", "training", "compression", "connections")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    federation: str
    peer_id: str
    protocol_version: int
    layout_digest: str
    element_count: int
    step: int
    training: bool
    compression: str
    connections: int
    def __init__(self, federation: _Optional[str] = ..., peer_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., layout_digest: _Optional[str] = ..., element_count: _Optional[int] = ..., step: _Optional[int] = ..., training: _Optional[bool] = ..., compression: _Optional[str] = ..., connections: _Optional[int] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("federation", "sender")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    federation: str
    sender: str
    def __init__(self, federation: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class StatePart(_message.Message):
    __slots__ = ("name", "element_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    element_count: int
    def __init__(self, name: _Optional[str] = ..., element_count: _Optional[int] = ...) -> None: ...

class StateManifest(_message.Message):
    __slots__ = ("federation", "sender", "step", "layout_digest", "algorithm", "parts", "counters", "compression")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    federation: str
    sender: str
    step: int
    layout_digest: str
    algorithm: str
    parts: _containers.RepeatedCompositeFieldContainer[StatePart]
    counters: _containers.ScalarMap[str, int]
    compression: str
    def __init__(self, federation: _Optional[str] = ..., sender: _Optional[str] = ..., step: _Optional[int] = ..., layout_digest: _Optional[str] = ..., algorithm: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[StatePart, _Mapping]]] = ..., counters: _Optional[_Mapping[str, int]] = ..., compression: _Optional[str] = ...) -> None: ...

class LeaveNotice(_message.Message):
    __slots__ = ("federation", "sender", "step", "reason")
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    federation: str
    sender: str
    step: int
    reason: str
    def __init__(self, federation: _Optional[str] = ..., sender: _Optional[str] = ..., step: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
