#!/bin/sh
# Generates the Python client of Agent Fabric (messages and gRPC stubs) from proto/ into OUT_DIR.
# Usage: examples/python/generate.sh OUT_DIR        (PYTHON=… picks the interpreter; python3)
# Needs python3 with grpc_tools. The generated code is not committed.
set -eu
out=${1:?usage: generate.sh OUT_DIR}
PYTHON=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../../proto"
protos=$(ls fabric/v1/*.proto)
# proto3 `optional` fields need protoc 3.15 or newer.
version=$("$PYTHON" -m grpc_tools.protoc --version | awk '{print $2}')
major=${version%%.*}
minor=${version#*.}
minor=${minor%%.*}
if [ "$major" -gt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -ge 15 ]; }; then
  # shellcheck disable=SC2086 # one word per file
  exec "$PYTHON" -m grpc_tools.protoc -I. --python_out="$out" --grpc_python_out="$out" $protos
fi
# An older protoc (Debian 12's python3-grpc-tools bundles 3.5.1) cannot parse `optional`, but
# compiles the descriptors buf builds from the same files: an `optional` field becomes a one-field
# oneof, the same on the wire, HasField() still tells whether it is set.
npx --no-install buf build . -o "$out/fabric.binpb"
# grpc_tools' __main__ adds -I for its bundled protos, which --descriptor_set_in excludes.
# shellcheck disable=SC2086
"$PYTHON" -c 'import sys; from grpc_tools import protoc; sys.exit(protoc.main(["protoc"] + sys.argv[1:]))' \
  --descriptor_set_in="$out/fabric.binpb" --python_out="$out" --grpc_python_out="$out" $protos
rm "$out/fabric.binpb"
