// Command ferretdb runs FerretDB v1.24.2 (SQLite backend) through its public
// embeddable package.
//
// Why not the plain `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`:
// a binary built that way panics at start with "Invalid build/version/version.txt
// file content" because the module zip lacks the generated version.txt. The
// embeddable package skips that check and always has telemetry disabled and locked.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // -pprof-addr: Go CPU profiles of the server (perf/profile_reads.py)
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", "TCP address to listen on (keep it on loopback)")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite data directory URL, ending in a slash")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	pprofAddr := flag.String("pprof-addr", "", "serve /debug/pprof/ on this address (off if empty)")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "bad --log-level:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *pprofAddr != "" {
		go func() {
			logger.Error("pprof server stopped", "error", http.ListenAndServe(*pprofAddr, nil))
		}()
	}

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: *sqliteURL,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger.Info("ferretdb listening", "uri", f.MongoDBURI())
	if err := f.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
}
