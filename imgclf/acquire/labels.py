"""Class labels to safe folder names, and the check that two labels never share a folder.

A label comes from untrusted input and becomes a directory under `--out`, so it must not escape it
(`../`, absolute paths), hide (leading dot), take the name of a file the downloader writes there
(`manifest.csv`), or differ only in Unicode normalisation or case from another label (macOS and
Windows folders are case-insensitive: `Cat` and `cat` would merge).
"""

from __future__ import annotations

import re
import unicodedata

from imgclf.acquire.layout import RESERVED_NAMES
from imgclf.errors import InputError

MAX_LABEL_BYTES = 100
# Characters that are separators or special on some filesystem, plus control characters.
_UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10))}
_WINDOWS_RESERVED |= {f"LPT{i}" for i in range(10)}


def safe_label(label: str) -> str:
    """The folder name for `label`: NFC, no separators or control characters, no leading dot."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", label)).strip()
    name = name.lstrip(".").rstrip(". ")
    if name.upper() in _WINDOWS_RESERVED or name.casefold() in RESERVED_NAMES:
        name = f"_{name}"
    encoded = name.encode("utf-8")[:MAX_LABEL_BYTES]
    name = encoded.decode("utf-8", errors="ignore")
    return name or "_"


class LabelFolders:
    """Remembers label -> folder and refuses two labels that would land in the same folder."""

    def __init__(self) -> None:
        self._folder_of: dict[str, str] = {}
        self._owner_of_folder: dict[str, tuple[str, str]] = {}

    def folder(self, label: str, where: str = "") -> str:
        """The folder of `label`; InputError naming `where` if another label claimed it."""
        cached = self._folder_of.get(label)
        if cached is not None:
            return cached
        folder = safe_label(label)
        owner = self._owner_of_folder.get(folder.casefold())
        if owner is not None and owner[0] != label:
            raise InputError(
                f"{where}: label {label!r} and label {owner[0]!r} ({owner[1]}) would share the "
                f"folder {folder!r}; rename one of them."
            )
        self._owner_of_folder[folder.casefold()] = (label, where)
        self._folder_of[label] = folder
        return folder

    def labels(self) -> list[str]:
        """Labels seen so far, in first-seen order."""
        return list(self._folder_of)
