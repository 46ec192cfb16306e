"""What the operator signs in each ModelAssignment, and how the device checks it.

The signature is Ed25519 over a canonical encoding (sorted JSON with a fixed prefix)
of the device it is meant for, the desired state's revision and every field of the
assignment but the signature: an assignment cannot be moved to another device or
another desired state, nor any field changed, without the signature failing.
"""

from __future__ import annotations

import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.protocol.edgefleet.v1 import fleet_pb2 as pb

DOMAIN = b"edgefleet.v1.ModelAssignment\n"
PUBLIC_KEY_BYTES = 32


def assignment_bytes(namespace: str, device: str, revision: str,
                     assignment: pb.ModelAssignment) -> bytes:
    runtime = assignment.runtime
    fields = {
        "namespace": namespace, "device": device, "revision": revision,
        "name": assignment.name, "version": assignment.version, "digest": assignment.digest,
        "sizeBytes": assignment.size_bytes, "weight": assignment.weight,
        "runtime": {"intraOpThreads": runtime.intra_op_threads,
                    "interOpThreads": runtime.inter_op_threads,
                    "maxBatchSize": runtime.max_batch_size,
                    "maxDelayMicros": runtime.max_delay_micros},
    }
    # Fields added later are covered only when set, so that an assignment without them
    # signs the same bytes as before and older runtimes still verify it.
    if assignment.variant:
        fields["variant"] = assignment.variant
    if runtime.execution_providers:
        fields["runtime"]["executionProviders"] = list(runtime.execution_providers)
    if assignment.HasField("data_collection"):
        policy = assignment.data_collection
        fields["dataCollection"] = {
            "sampleRate": policy.sample_rate, "lowConfidenceBelow": policy.low_confidence_below,
            "includeOutputs": policy.include_outputs,
            "maxBytesPerDevice": policy.max_bytes_per_device,
            "maxBytesPerDay": policy.max_bytes_per_day}
    return DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(key: Ed25519PrivateKey, namespace: str, device: str, revision: str,
         assignment: pb.ModelAssignment) -> bytes:
    return key.sign(assignment_bytes(namespace, device, revision, assignment))


def verify(public_key: bytes, namespace: str, device: str, revision: str,
           assignment: pb.ModelAssignment) -> bool:
    """Whether the assignment carries the operator's signature for this device and
    revision; False for a missing or wrong one, or a key that is not 32 bytes."""
    if len(public_key) != PUBLIC_KEY_BYTES or not assignment.signature:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            assignment.signature, assignment_bytes(namespace, device, revision, assignment))
    except (InvalidSignature, ValueError):
        return False
    return True
