"""A reference model of the external contract (docs/contract.md), kept apart from the worker.

It never imports `worker`: it is the second, plain reading of the contract that the
worker's own code is checked against, by the unit tests (tests/unit/test_xdm.py,
tests/unit/test_reference.py) and end to end by `make demo` (deploy/local/demo).

- `reference.xdm`: attributes as XDM trees: the merge rule of a partial update,
  paths, the projection of selected attributes, JSON value comparison.
- `reference.config`: the parts of the configuration file that shape records.
- `reference.model`: per-profile state, membership and the records the worker must
  send (sections 2 and 3), plus the dead letters and event outcomes it must count.
"""

from reference.config import Config, Destination, Segment, parse_config
from reference.model import Expected, Identities, Model, ProfileState, aep_time, partition_key
from reference.xdm import MISSING, Json, get_path, merge, project, same_value, values_differ

__all__ = [
    "MISSING",
    "Config",
    "Destination",
    "Expected",
    "Identities",
    "Json",
    "Model",
    "ProfileState",
    "Segment",
    "aep_time",
    "get_path",
    "merge",
    "parse_config",
    "partition_key",
    "project",
    "same_value",
    "values_differ",
]
