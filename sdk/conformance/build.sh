#!/bin/sh
# Builds the plugin binaries of the conformance suite (not committed: `make sdk` runs this):
#   plugins/*.wasm   from plugins/*.wat, with wabt's wat2wasm (Debian: apt-get install wabt;
#                    made with wabt 1.0.32)
#   plugins/not-wasm.wasm   the bytes "\0asm\1\0\0\0garbage" (not a valid module)
#   plugins/go-upper.wasm   from examples/plugins/go-upper, with the local Go toolchain
#                    (GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared, -trimpath; same Go
#                    version, same bytes)
# Run it after editing a .wat.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/plugins"
for wat in *.wat; do
	wat2wasm "$wat" -o "${wat%.wat}.wasm"
done
printf '\000asm\001\000\000\000garbage' >not-wasm.wasm
if [ "${SKIP_GO_PLUGIN:-}" = "" ]; then
	(cd "$here/../../examples/plugins/go-upper" &&
		GOTOOLCHAIN=local GOOS=wasip1 GOARCH=wasm go build -trimpath -buildmode=c-shared \
			-o "$here/plugins/go-upper.wasm" .)
fi
