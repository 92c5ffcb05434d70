"""A multipart/form-data body → its parts as bytes, in one pass of python-multipart's parser.

Starlette's `request.form()` runs the same parser but spools every file part into a
SpooledTemporaryFile wrapped in an UploadFile, awaits a write per chunk and a read per part:
for a 3 KB photo that bookkeeping cost more than the parse (0.15 ms against 0.05 ms per
request, measured: docs/benchmarks.md, HTTP service). The body is already in memory (capped
by --max-body-bytes before it is read), so the parts are plain bytes here. Refusals use
Starlette's sentences, so answers do not change with the parser.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """A body that cannot be read as multipart/form-data, or over a count limit."""


class TooManyFiles(MultipartError):
    """More file parts than the limit."""


@dataclass
class Part:
    """One part: its form field name, its file name (None for a plain field) and its bytes."""

    name: str
    filename: str | None
    data: bytes


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _Collector:
    """Parser callbacks gathering parts (the shape of starlette.formparsers.MultiPartParser)."""

    def __init__(self, max_files: int, max_fields: int) -> None:
        self.max_files = max_files
        self.max_fields = max_fields
        self.parts: list[Part] = []
        self.files = 0
        self.fields = 0
        self._data: list[bytes] = []
        self._current: Part | None = None
        self._disposition = b""
        self._header_name = b""
        self._header_value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._data = []
        self._disposition = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def on_part_end(self) -> None:
        # Only a part that ended is kept (as Starlette does): a cut-off last part is not one.
        if self._current is not None:
            self._current.data = b"".join(self._data)
            self.parts.append(self._current)
            self._current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise MultipartError('The Content-Disposition header field "name" must be provided.')
        filename = options.get(b"filename")
        if filename is not None:
            self.files += 1
            if self.files > self.max_files:
                raise TooManyFiles(f"Too many files. Maximum number of files is {self.max_files}.")
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise MultipartError(
                    f"Too many fields. Maximum number of fields is {self.max_fields}."
                )
        name = _text(options[b"name"])
        self._current = Part(name, None if filename is None else _text(filename), b"")


def parse_multipart(
    content_type: str, body: bytes, *, max_files: int, max_fields: int
) -> list[Part]:
    """The parts of `body`, in order; raises MultipartError (TooManyFiles past `max_files`)."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("Missing boundary in multipart.")
    collector = _Collector(max_files, max_fields)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise MultipartError("Invalid multipart data.") from error
    return collector.parts
