"""Code generated from the .proto files beside it by `make protos`; do not edit."""
