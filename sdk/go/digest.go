package hotload

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Digest returns the sha256:<hex> digest of b, the form the sidecar sends. The host checks
// it again before it compiles: the shared volume is writable by other containers of the pod.
func Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// parseSHA256 returns the 64 hex digits of a well-formed sha256:<64 lowercase hex>.
func parseSHA256(digest string) (string, bool) {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(h) != 64 {
		return "", false
	}
	for _, c := range []byte(h) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return h, true
}
