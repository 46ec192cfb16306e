"""The wire contracts both sides share: code generated from the .proto files beside it
by `make protos` (do not edit those), and the small hand-written format rules that
every boundary applies alike: the digest format (digests.py) and the check that an ONNX
model names no other file (onnx_refs.py)."""
