"""The pure core: no I/O, no threads, no clock; time comes in as an argument.
Everything here is a function of its inputs, and it imports only the
standard library and msgpack (checked in CI, pyproject.toml).

* reading FeatBit: :mod:`.wire` (JSON -> the rows of :mod:`.schema`),
  :mod:`.document` (bootstrap documents), :mod:`.protocol` (token, frames,
  reconnect policy);
* the data: :mod:`.dataset` (full/patch merge), :mod:`.changes` (what a new
  generation changed), :mod:`.snapshot` (the shared snapshot's byte codec);
* evaluation: :mod:`.user` (the ONE reading of a user dict), :mod:`.model`
  (compiled flags), :mod:`.operators`, :mod:`.rollout`, :mod:`.evaluator`,
  :mod:`.results`, :mod:`.view` (one generation, compiled lazily);
* events: :mod:`.records` (ring records, insight payloads, delivery rules);
* configuration: :mod:`.settings` (what a valid setting is),
  :mod:`.errors` (the exception tree).
"""
