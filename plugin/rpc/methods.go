package rpc

// Host→worker methods (@paperclipai/plugin-sdk 2026.916.1,
// HOST_TO_WORKER_REQUIRED_METHODS and HOST_TO_WORKER_OPTIONAL_METHODS).
const (
	// Required.
	MethodInitialize = "initialize"
	MethodHealth     = "health"
	MethodShutdown   = "shutdown"

	// Optional: general.
	MethodValidateConfig   = "validateConfig"
	MethodConfigChanged    = "configChanged"
	MethodOnEvent          = "onEvent"
	MethodRunJob           = "runJob"
	MethodHandleWebhook    = "handleWebhook"
	MethodHandleAPIRequest = "handleApiRequest"
	MethodGetData          = "getData"
	MethodPerformAction    = "performAction"
	MethodExecuteTool      = "executeTool"

	// Optional: external objects.
	MethodDetectExternalObjects  = "detectExternalObjects"
	MethodResolveExternalObject  = "resolveExternalObject"
	MethodRefreshExternalObjects = "refreshExternalObjects"

	// Optional: environment.
	MethodEnvironmentValidateConfig         = "environmentValidateConfig"
	MethodEnvironmentProbe                  = "environmentProbe"
	MethodEnvironmentAcquireLease           = "environmentAcquireLease"
	MethodEnvironmentResumeLease            = "environmentResumeLease"
	MethodEnvironmentReleaseLease           = "environmentReleaseLease"
	MethodEnvironmentDestroyLease           = "environmentDestroyLease"
	MethodEnvironmentRealizeWorkspace       = "environmentRealizeWorkspace"
	MethodEnvironmentExecute                = "environmentExecute"
	MethodEnvironmentRunnerIngressEndpoint  = "environmentRunnerIngressEndpoint"
	MethodEnvironmentSyncIn                 = "environmentSyncIn"
	MethodEnvironmentSyncOut                = "environmentSyncOut"
	MethodEnvironmentStartInteractiveSetup  = "environmentStartInteractiveSetup"
	MethodEnvironmentGetInteractiveSetup    = "environmentGetInteractiveSetup"
	MethodEnvironmentCaptureTemplate        = "environmentCaptureTemplate"
	MethodEnvironmentCancelInteractiveSetup = "environmentCancelInteractiveSetup"
	MethodEnvironmentDeleteTemplate         = "environmentDeleteTemplate"

	// Optional: login terminal.
	MethodLoginPtyOpen  = "loginPtyOpen"
	MethodLoginPtyInput = "loginPtyInput"
	MethodLoginPtyStop  = "loginPtyStop"
	MethodLoginPtyClose = "loginPtyClose"

	// Optional: duplex channel.
	MethodDuplexChannelOpen  = "duplexChannelOpen"
	MethodDuplexChannelWrite = "duplexChannelWrite"
	MethodDuplexChannelStop  = "duplexChannelStop"
	MethodDuplexChannelClose = "duplexChannelClose"
)

// Host→worker notification seen in the server besides onEvent. It is not in
// HostMethods; add it to Options.Methods to receive it.
const MethodAgentsSessionsEvent = "agents.sessions.event"

// Worker→host methods an environment provider may use (requests unless noted).
const (
	MethodLog               = "log"         // notification (the host also accepts a request)
	MethodExecuteLog        = "execute.log" // notification {stream, chunk}; needs the invocation id
	MethodConfigGet         = "config.get"
	MethodStateGet          = "state.get"
	MethodStateSet          = "state.set"
	MethodStateDelete       = "state.delete"
	MethodSecretsResolve    = "secrets.resolve"
	MethodSpanRecord        = "span.record"
	MethodLoginPtyOutput    = "loginPty.output"    // notification
	MethodLoginPtyExit      = "loginPty.exit"      // notification
	MethodDuplexChannelData = "duplexChannel.data" // notification
	MethodDuplexChannelExit = "duplexChannel.exit" // notification
)

// HostMethods lists every host→worker method of the protocol, in the SDK's order.
// A request for a method outside this list (or Options.Methods) gets -32601
// METHOD_NOT_FOUND; one inside it that the Handler does not implement gets -32004.
// Treat it as read-only.
var HostMethods = []string{
	MethodInitialize, MethodHealth, MethodShutdown,

	MethodValidateConfig, MethodConfigChanged, MethodOnEvent, MethodRunJob,
	MethodHandleWebhook, MethodHandleAPIRequest, MethodGetData, MethodPerformAction,
	MethodExecuteTool,

	MethodDetectExternalObjects, MethodResolveExternalObject, MethodRefreshExternalObjects,

	MethodEnvironmentValidateConfig, MethodEnvironmentProbe, MethodEnvironmentAcquireLease,
	MethodEnvironmentResumeLease, MethodEnvironmentReleaseLease, MethodEnvironmentDestroyLease,
	MethodEnvironmentRealizeWorkspace, MethodEnvironmentExecute,
	MethodEnvironmentRunnerIngressEndpoint, MethodEnvironmentSyncIn, MethodEnvironmentSyncOut,
	MethodEnvironmentStartInteractiveSetup, MethodEnvironmentGetInteractiveSetup,
	MethodEnvironmentCaptureTemplate, MethodEnvironmentCancelInteractiveSetup,
	MethodEnvironmentDeleteTemplate,

	MethodLoginPtyOpen, MethodLoginPtyInput, MethodLoginPtyStop, MethodLoginPtyClose,

	MethodDuplexChannelOpen, MethodDuplexChannelWrite, MethodDuplexChannelStop,
	MethodDuplexChannelClose,
}
