// Example Hotload plugin in Go (ABI: plugin-host/src/abi.rs), built as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o go-upper.wasm .
//
// handle() answers "go1:" + upper-cased request + "go1:" (the tagger plugins' framing)
// and keeps a request counter that it hands over across swaps (save_state / restore_state).
package main

import (
	"bytes"
	"encoding/binary"
	"unsafe"
)

var (
	input  []byte
	output []byte
	state  [4]byte
	count  uint32
)

// ptr returns the linear-memory address of a slice's first byte.
func ptr(b []byte) int32 { return int32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

// pack returns (ptr << 32) | len, as the ABI wants.
func pack(b []byte) int64 { return int64(ptr(b))<<32 | int64(len(b)) }

//go:wasmexport alloc
func alloc(n int32) int32 {
	// Kept in a global so the collector never frees it while the host writes into it.
	if int(n) > cap(input) {
		input = make([]byte, n)
	}
	input = input[:n]
	if n == 0 {
		input = input[:1]
	}
	return ptr(input)
}

//go:wasmexport handle
func handle(p, n int32) int64 {
	count++
	output = append(output[:0], "go1:"...)
	output = append(output, bytes.ToUpper(input[:n])...)
	output = append(output, "go1:"...)
	return pack(output)
}

//go:wasmexport self_check
func selfCheck() int32 {
	if string(bytes.ToUpper([]byte("ok"))) != "OK" {
		return 1
	}
	return 0
}

//go:wasmexport save_state
func saveState() int64 {
	binary.LittleEndian.PutUint32(state[:], count)
	return pack(state[:])
}

//go:wasmexport restore_state
func restoreState(p, n int32) int32 {
	if n != 4 {
		return 1
	}
	count = binary.LittleEndian.Uint32(input[:4])
	return 0
}

func main() {}
