from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackRequest(_message.Message):
    __slots__ = ("model_name", "id", "labels")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_name: _Optional[str] = ..., id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "id", "labelled", "correct")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    id: str
    labelled: int
    correct: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., labelled: _Optional[int] = ..., correct: _Optional[int] = ...) -> None: ...
