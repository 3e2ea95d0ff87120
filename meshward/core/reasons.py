"""Every reason code scoring gives, with its weight: the one table (README, "Reasons").

A request's score is 1 - prod(1 - weight) over its reasons. Producers use the constants, so a
code cannot be misspelt into the default weight.
"""

from __future__ import annotations

UNKNOWN_DESTINATION = "unknown-destination"
UNKNOWN_SOURCE = "unknown-source"
UNKNOWN_PATH = "unknown-path"
UNKNOWN_METHOD = "unknown-method"
UNKNOWN_GRPC_METHOD = "unknown-grpc-method"
NEW_QUERY_PARAM = "new-query-param"
QUERY_VALUE_CLASS = "query-value-class"
# a segment at a `{str}` path position unlike the values it learned (pathvalues.py)
PATH_VALUE_CLASS = "path-value-class"
NEW_BODY_FIELD = "new-body-field"
BODY_TYPE_MISMATCH = "body-type-mismatch"
UNKNOWN_CONTENT_TYPE = "unknown-content-type"
NEW_CALLER_FOR_ENDPOINT = "new-caller-for-endpoint"
SIZE_OUT_OF_BAND = "size-out-of-band"
UNUSUAL_STATUS = "unusual-status"
# the caller's and the callee's sidecars reported one call differently (the both-ends join)
BOTH_ENDS_MISMATCH = "both-ends-mismatch"
# the threat detectors raised: never learned, alerted, denied in enforce
INSPECTION_FAILED = "inspection-failed"

WEIGHTS: dict[str, float] = {
    UNKNOWN_DESTINATION: 0.6,
    UNKNOWN_SOURCE: 0.6,
    UNKNOWN_PATH: 0.6,
    UNKNOWN_METHOD: 0.6,
    UNKNOWN_GRPC_METHOD: 0.6,
    NEW_QUERY_PARAM: 0.5,
    QUERY_VALUE_CLASS: 0.35,
    PATH_VALUE_CLASS: 0.35,
    NEW_BODY_FIELD: 0.5,
    BODY_TYPE_MISMATCH: 0.5,
    UNKNOWN_CONTENT_TYPE: 0.3,
    NEW_CALLER_FOR_ENDPOINT: 0.3,
    SIZE_OUT_OF_BAND: 0.25,
    UNUSUAL_STATUS: 0.2,
    BOTH_ENDS_MISMATCH: 0.5,
    INSPECTION_FAILED: 0.6,
}
UNLISTED_WEIGHT = 0.3  # a code from an older or newer meshward not in this table
THREAT_WEIGHT = 0.95  # each threat found
