package hotload

import (
	"io"
	"log/slog"
	"os"
)

// quietLogger keeps test output to failures; HOTLOAD_TEST_LOG=1 shows the logs.
func quietLogger() *slog.Logger {
	if os.Getenv("HOTLOAD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
