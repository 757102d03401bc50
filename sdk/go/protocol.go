package hotload

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// The app socket protocol, v2 (docs/protocol.md): newline-delimited JSON over a Unix socket.
//
//	app ──► sidecar   {"type":"hello","app":"checkout","worker":"4711","protocol":2}
//	sidecar ──► app   {"type":"load","plugin":"auth","revision":"r2","path":"…","digest":"sha256:…","config":{…}}
//	app ──► sidecar   {"type":"loaded","plugin":"auth","revision":"r2","health":"…"}
//	                  {"type":"failed","plugin":"auth","revision":"r2","reason":"…"}
//	sidecar ──► app   {"type":"unload","plugin":"auth"}
//	app ──► sidecar   {"type":"unloaded","plugin":"auth"}
//	sidecar ──► app   {"type":"error","reason":"…"}   (the app sent something unusable)
//	app ──► sidecar   {"type":"health","plugins":[{"plugin":"auth","revision":"r2","calls":…,"errors":{…},"latency_us":[…]}]}

// ProtocolVersion is the app protocol version this SDK speaks.
const ProtocolVersion = 2

// maxSidecarLine bounds one line from the sidecar; a longer one is skipped, not buffered.
const maxSidecarLine = 1 << 20

// sidecarMessage is any message from the sidecar; Type says which fields are set.
type sidecarMessage struct {
	Type     string          `json:"type"`
	Plugin   string          `json:"plugin"`
	Revision string          `json:"revision"`
	Path     string          `json:"path"`
	Digest   string          `json:"digest"`
	Config   json.RawMessage `json:"config"`
	Reason   string          `json:"reason"`
}

type helloMessage struct {
	Type     string `json:"type"`
	App      string `json:"app"`
	Worker   string `json:"worker"`
	Protocol int    `json:"protocol"`
}

type loadedMessage struct {
	Type     string `json:"type"`
	Plugin   string `json:"plugin"`
	Revision string `json:"revision"`
	Health   string `json:"health"`
}

type failedMessage struct {
	Type     string `json:"type"`
	Plugin   string `json:"plugin"`
	Revision string `json:"revision"`
	Reason   string `json:"reason"`
}

type healthMessage struct {
	Type    string         `json:"type"`
	Plugins []PluginHealth `json:"plugins"`
}

type unloadedMessage struct {
	Type   string `json:"type"`
	Plugin string `json:"plugin"`
}

func hello(app, worker string) helloMessage {
	return helloMessage{Type: "hello", App: app, Worker: worker, Protocol: ProtocolVersion}
}

// encodeLine serialises a message as one line, newline included.
func encodeLine(msg any) []byte {
	line, err := json.Marshal(msg)
	if err != nil {
		// Only plain structs of strings and ints are encoded here.
		line = []byte("{}")
	}
	return append(line, '\n')
}

// parseSidecarLine parses one line (without its newline). Pure.
func parseSidecarLine(line []byte) (sidecarMessage, error) {
	var msg sidecarMessage
	if err := json.Unmarshal(bytes.TrimSpace(line), &msg); err != nil {
		return msg, fmt.Errorf("not a sidecar message: %w", err)
	}
	switch msg.Type {
	case "load":
		if msg.Plugin == "" || msg.Revision == "" {
			return msg, fmt.Errorf("a load without plugin or revision cannot be answered")
		}
	case "unload":
		if msg.Plugin == "" {
			return msg, fmt.Errorf("an unload without plugin cannot be answered")
		}
	case "error":
	default:
		return msg, fmt.Errorf("unknown message type %q", msg.Type)
	}
	return msg, nil
}

// configBytes is what a plugin's configure export receives for a release's config: nothing
// for null (no config), else the JSON text, compact, as the Rust host passes it.
func configBytes(raw json.RawMessage) []byte {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

// nextBackoff is the wait before the next connection attempt: doubling, capped. Pure.
func nextBackoff(d, lo, hi time.Duration) time.Duration {
	if d < lo {
		return lo
	}
	return min(2*d, hi)
}
