"""Load data-sync documents from JSON text or a bootstrap file (R-72, R-73).

Reading the file is :func:`featbit_shm._runtime.files.read_bootstrap_file`
(this module is pure). A bootstrap file is exactly what FeatBit's data-sync endpoint returns::

    curl -H "Authorization: <secret>" <eval-server>/api/public/sdk/server/latest-all > flags.json

An unreadable or malformed *document* is a :class:`~featbit_shm.errors.DataError`
naming the problem; malformed *entities* inside a good document are skipped
and listed in :attr:`LoadResult.skipped` while their siblings load (R-15).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import jsonstream
from .dataset import DataSet
from .errors import DataError
from .wire import DataSyncMessage, Skipped, WireError, parse_envelope


@dataclass(frozen=True)
class LoadResult:
    dataset: DataSet
    skipped: list[Skipped]


def load_document(text: str | bytes, *, require_full: bool = True, origin: str = "document") -> LoadResult:
    """Parse a data-sync document into a new data set (a full replacement)."""
    try:
        document = jsonstream.loads(text)  # entity lists packed as they are read
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{origin}: not valid JSON: {exc}") from None
    try:
        message: DataSyncMessage = parse_envelope(document)
    except WireError as exc:
        raise DataError(f"{origin}: not a data-sync document: {exc}") from None
    if require_full and message.event_type != "full":
        raise DataError(f"{origin}: a bootstrap document must have eventType 'full'")
    # loading always replaces the store, even when eventType is patch.
    dataset, _changes = DataSet().apply(DataSyncMessage("full", message.flags, message.segments))
    return LoadResult(dataset, message.skipped)
