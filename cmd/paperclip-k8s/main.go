// Command paperclip-k8s is the Paperclip Kubernetes sandbox provider.
//
//	paperclip-k8s [worker]   serve the plugin protocol on stdin/stdout
//	paperclip-k8s manifest   print the plugin manifest (JSON)
//	paperclip-k8s rbac       print the RBAC and admission policy of the provider identity
//	paperclip-k8s demo       acquire → exec → release on a local control plane
//	paperclip-k8s version
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/paperclip-k8s/paperclip-k8s/plugin"
	"github.com/paperclip-k8s/paperclip-k8s/plugin/rpc"
	"k8s.io/klog/v2"
)

func main() {
	cmd := "worker"
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	var err error
	switch cmd {
	case "worker":
		err = worker()
	case "manifest":
		err = printManifest()
	case "rbac":
		err = printRBAC(os.Stdout, os.Args[2:])
	case "demo":
		err = demo(os.Args[2:])
	case "bench":
		err = runBench(os.Args[2:])
	case "version":
		fmt.Println(plugin.Version)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "paperclip-k8s: unknown command %q\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "paperclip-k8s:", err)
		os.Exit(1)
	}
}

const usage = `usage: paperclip-k8s [command]
  worker     serve the Paperclip plugin protocol on stdin/stdout (the default)
  manifest   print the plugin manifest as JSON
  rbac       print the ClusterRoles, binding, admission policy and flow schema
             for the provider identity (YAML; --service-account <ns>/<name>)
  demo       acquire a lease, exec in it and release it; starts a local
             control plane unless --kubeconfig is given (demo -h for flags)
  bench      measure requests, latency and throughput of acquire and
             execute on the local control plane (bench -h for flags)
  version    print the version
`

// worker serves the protocol until stdin closes or the host says shutdown.
// stdout carries the protocol only; logs go to the host once initialized,
// to stderr before.
func worker() error {
	level := slog.LevelInfo
	if os.Getenv("PAPERCLIP_K8S_DEBUG") != "" {
		level = slog.LevelDebug
	}
	// Records go to the host's plugin log (`log` messages) once the
	// handshake is done; before it, and when the host is gone, to stderr.
	logs := rpc.NewLogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}), level)
	log := slog.New(logs)
	// client-go logs through klog: the same way, marked as such.
	klog.SetSlogLogger(log.With("component", "client-go"))
	p, err := plugin.New(log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	conn := rpc.NewConn(os.Stdin, os.Stdout, p.Methods(), rpc.Options{Logger: log, Ordered: plugin.OrderedRequests})
	logs.Attach(conn)
	err = conn.Serve(ctx)
	if ctx.Err() != nil {
		return nil // terminated by signal
	}
	return err
}

func printManifest() error {
	m, err := plugin.Manifest()
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(m)
}
