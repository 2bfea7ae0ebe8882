package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/paperclip-k8s/paperclip-k8s/e2e/paperclip"
)

// testPluginLogs: the provider's log records reach the host's plugin log
// at their level, with their company, through `log` requests: the server
// writes them as "<LEVEL>: [plugin] …" (not "WARN: [plugin stderr] …") and
// stores them for GET /api/plugins/:id/logs. A failed hook is logged once,
// at error, with its company and environment.
//
// A saved sandbox environment's probe acquires a lease: on a working
// environment the provider logs "lease acquired" (info); on one whose API
// server does not answer the acquire fails and the hook failure is logged
// (error).
func testPluginLogs(ctx context.Context, t *testing.T, r *rig) {
	is := is.New(t)
	good, err := r.srv.CreateEnvironment(ctx, r.companyID, "k8s-logs", r.config("sandbox"))
	is.NoErr(err)
	res, err := r.srv.ProbeEnvironment(ctx, r.companyID, good.ID)
	is.NoErr(err)
	is.True(res.OK)

	// The same cluster's kubeconfig with a server that refuses connections:
	// valid config (validation does not dial), failing acquire.
	kc, err := clientcmd.Load(r.env.KubeconfigBytes())
	is.NoErr(err)
	for _, c := range kc.Clusters {
		c.Server = "https://127.0.0.1:1"
	}
	dead, err := clientcmd.Write(*kc)
	is.NoErr(err)
	cfg := r.config("sandbox")
	cfg["kubeconfig"] = string(dead)
	bad, err := r.srv.CreateEnvironment(ctx, r.companyID, "k8s-logs-unreachable", cfg)
	is.NoErr(err)
	started := time.Now()
	badRes, err := r.srv.ProbeEnvironment(ctx, r.companyID, bad.ID)
	t.Logf("probe of the unreachable environment (%s): ok=%v err=%v %s", time.Since(started).Round(time.Millisecond), badRes.OK, err, badRes.Summary)
	is.True(err != nil || !badRes.OK)

	// The host flushes stored plugin logs every 5 s.
	var acquired, failed paperclip.PluginLog
	err = waitFor(ctx, 30*time.Second, func() error {
		logs, err := r.srv.PluginLogs(ctx, r.pluginID, 500)
		if err != nil {
			return err
		}
		acquired, failed = paperclip.PluginLog{}, paperclip.PluginLog{}
		for _, l := range logs { // newest first
			if l.Message == "lease acquired" && acquired.ID == "" && l.CompanyID != nil && *l.CompanyID == r.companyID {
				acquired = l
			}
			if l.Message == "environmentAcquireLease failed" && failed.ID == "" && l.Meta["environmentId"] == bad.ID {
				failed = l
			}
		}
		if acquired.ID == "" || failed.ID == "" {
			return fmt.Errorf("not stored yet (%d rows): lease acquired %v, acquire failure %v", len(logs), acquired.ID != "", failed.ID != "")
		}
		return nil
	})
	is.NoErr(err)
	t.Logf("stored: %s %q %v; %s %q %v", acquired.Level, acquired.Message, acquired.Meta, failed.Level, failed.Message, failed.Meta)
	is.Equal(acquired.Level, "info")
	is.True(strings.Contains(fmt.Sprint(acquired.Meta["workload"]), r.c.tenant+"/")) // the Sandbox in the company's namespace
	is.Equal(failed.Level, "error")
	is.True(failed.CompanyID != nil && *failed.CompanyID == r.companyID)
	is.Equal(failed.Meta["method"], "environmentAcquireLease")
	is.True(strings.Contains(fmt.Sprint(failed.Meta["error"]), "127.0.0.1:1"))
	_, hasDuration := failed.Meta["durationMs"]
	is.True(hasDuration)
	for _, v := range failed.Meta {
		is.True(!strings.Contains(fmt.Sprint(v), "certificate-authority-data")) // no config in the log
	}

	// The server's log has them at their level, not as stderr lines.
	lines, err := r.srv.PluginLines(r.pluginID)
	is.NoErr(err)
	var sawError bool
	for _, l := range lines {
		if l.Source == "stderr" && strings.Contains(l.Message, "level=") {
			t.Errorf("a provider record went to stderr: %s", l.Message)
		}
		if l.Source == "log" && l.Level == "ERROR" && l.Message == "environmentAcquireLease failed" && l.Fields()["environmentId"] == bad.ID {
			sawError = true
		}
	}
	is.True(sawError)

	is.NoErr(r.srv.DeleteEnvironment(ctx, bad.ID))
	is.NoErr(r.srv.DeleteEnvironment(ctx, good.ID))
}
