// Command server is a Go HTTP app that serves every request through a hot-loaded Wasm
// plugin: POST / runs the body through plugin "handler" and answers its output. The plugin
// arrives from the Hotload sidecar (a rollout of a PluginRelease) and is swapped while the
// app keeps serving.
//
// Every response names the worker that served it (x-hotload-worker, the id the app says
// hello with), and POST / the plugin revision that produced the body (x-hotload-revision),
// like the Rust demo app, so a test or a person can tell what each pod serves.
//
//	go build -o server ./examples/server
//	HOTLOAD_APP_SOCKET=/var/run/hotload/app.sock ./server -listen 0.0.0.0:8080
package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	hotload "github.com/hotload-dev/hotload/sdk/go"
)

const (
	// workerHeader names the worker (process) that served a response.
	workerHeader = "x-hotload-worker"
	// revisionHeader names the plugin revision that produced the body of POST /.
	revisionHeader = "x-hotload-revision"
	// maxBody bounds a request body (the example tagger plugins take up to 31 KiB).
	maxBody = 16 << 10
)

func main() {
	listen := flag.String("listen", "0.0.0.0:8080", "address to serve HTTP on")
	plugin := flag.String("plugin", "handler", "plugin slot that handles POST /")
	app := flag.String("app", "go-example", "app name the sidecar shows")
	flag.Parse()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if err := run(*listen, *plugin, *app, logger); err != nil {
		logger.Error("server stopped", "error", err)
		os.Exit(1)
	}
}

// run serves until SIGTERM or SIGINT, then drains requests in flight.
func run(listen, plugin, app string, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	host, err := hotload.NewHost(ctx, hotload.Config{Logger: logger})
	if err != nil {
		return err
	}
	defer host.Close(context.Background())
	// Socket: $HOTLOAD_APP_SOCKET (the webhook sets it), else /var/run/hotload/app.sock.
	client := hotload.NewClient(host, hotload.ClientConfig{App: app, Logger: logger})
	go func() { _ = client.Run(ctx) }()

	server := &http.Server{
		Addr:              listen,
		Handler:           routes(host, plugin, client.Worker()),
		ReadHeaderTimeout: 5 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- server.ListenAndServe() }()
	logger.Info("serving", "listen", listen, "plugin", plugin, "worker", client.Worker())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	drain, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	return server.Shutdown(drain)
}

// routes is the app's HTTP surface: POST / through the plugin, GET /healthz.
func routes(host *hotload.Host, plugin, worker string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{$}", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		// The pin makes the revision named in the header the one that produced the body,
		// even when a swap lands during the call.
		pinned, err := host.Pin(plugin)
		if err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, hotload.ErrNotLoaded) {
				status = http.StatusServiceUnavailable
			}
			http.Error(w, err.Error(), status)
			return
		}
		defer pinned.Release()
		out, err := pinned.Call(r.Context(), body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set(revisionHeader, pinned.Revision().Revision)
		_, _ = w.Write(out)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	return withWorker(mux, worker)
}

// withWorker names the worker on every response.
func withWorker(next http.Handler, worker string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(workerHeader, worker)
		next.ServeHTTP(w, r)
	})
}
