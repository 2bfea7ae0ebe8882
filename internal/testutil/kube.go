package testutil

import (
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// WatchKube is a client over rc whose watches are not cut off by rc's
// request timeout (the dev cluster's admin client has 30 s).
func WatchKube(tb testing.TB, rc *rest.Config) kubernetes.Interface {
	tb.Helper()
	cfg := rest.CopyConfig(rc)
	cfg.Timeout = 0
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return kc
}
