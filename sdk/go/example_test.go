package hotload_test

import (
	"context"
	"log"
	"net/http"

	hotload "github.com/hotload-dev/hotload/sdk/go"
)

// An app that serves HTTP requests through the plugin "auth", which the sidecar rolls out.
func Example() {
	ctx := context.Background()
	host, err := hotload.NewHost(ctx, hotload.Config{CacheDir: "/tmp/hotload-cache"})
	if err != nil {
		log.Fatal(err)
	}
	defer host.Close(ctx)
	// One Client per process; it keeps reconnecting until ctx is done.
	go hotload.NewClient(host, hotload.ClientConfig{App: "checkout"}).Run(ctx)

	http.HandleFunc("/check", func(w http.ResponseWriter, r *http.Request) {
		// Pin when a request calls the plugin more than once and needs one revision.
		auth, err := host.Pin("auth")
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer auth.Release()
		verdict, err := auth.Call(r.Context(), []byte(r.Header.Get("Authorization")))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		_, _ = w.Write(verdict)
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
