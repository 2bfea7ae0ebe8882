// Package resource reads the data files that describe Kubernetes objects
// (see package resources) and computes everything that needs no cluster:
// Load parses and checks them against schemas/resource.schema.json and the
// values schema, Render fills a template from the values, Evaluate applies
// the readiness rules to an object, Deadline reads a workload's deadline,
// and Catalog.Permissions lists the RBAC rules the engine needs. It imports
// no Kubernetes client (package engine does the I/O), as kstatus keeps
// status computation apart from polling.
package resource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v5"
	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/internal/jsonpointer"
	"github.com/paperclip-k8s/paperclip-k8s/schemas"
)

// Use says when the provider uses an object; a data file declares it
// with its scope: key.
type Use string

const (
	// UseTenant objects exist once per company and are server-side applied.
	UseTenant Use = "tenant"
	// UseRun objects are created per run and owned by the workload.
	UseRun Use = "run"
	// UseBackend objects are the workload of a run.
	UseBackend Use = "backend"
	// UsePod describes the pods workloads own; the provider only reads them.
	UsePod Use = "pod"
	// UseFragment is a template other files include with $use.
	UseFragment Use = "fragment"
)

// API names an object's API group, kind and plural, and the versions the
// provider accepts, preferred first.
type API struct {
	Group    string   `json:"group"`
	Kind     string   `json:"kind"`
	Resource string   `json:"resource"`
	Versions []string `json:"versions"`
	Missing  string   `json:"missing,omitempty"`
	// ClusterScoped says the objects are not namespaced (a Namespace), so
	// their permissions are granted cluster-wide; everything else is
	// granted per tenant namespace.
	ClusterScoped bool `json:"clusterScoped,omitempty"`
}

// Match tests the value at one path: equals, exists, gt or empty; with no
// test, the value must be set and not empty (null, false, 0, "", [], {}).
// when and $if test the values, health rules the object.
type Match struct {
	Path   string   `json:"path"`
	Equals any      `json:"equals,omitempty"`
	Exists *bool    `json:"exists,omitempty"`
	Gt     *float64 `json:"gt,omitempty"`
	Empty  *bool    `json:"empty,omitempty"`
}

// ConditionMatch selects a status condition by type, status and reason.
type ConditionMatch struct {
	Type   string   `json:"type"`
	Status string   `json:"status,omitempty"`
	Reason []string `json:"reason,omitempty"`
}

// Rule maps an object that satisfies every test to a State. A rule that
// is only {$use: file} stands for that file's rules, in order.
type Rule struct {
	Use         string          `json:"$use,omitempty"`
	State       State           `json:"state"`
	Match       []Match         `json:"match,omitempty"`
	Condition   *ConditionMatch `json:"condition,omitempty"`
	Reason      string          `json:"reason,omitempty"`
	ReasonFrom  string          `json:"reasonFrom,omitempty"`
	Message     string          `json:"message,omitempty"`
	MessageFrom string          `json:"messageFrom,omitempty"`
	// Hint is what the user can do about this state; it follows the
	// message in errors.
	Hint string `json:"hint,omitempty"`
	// Event makes the rule hold only when an event about the object
	// matches (see events.go); the waits read them.
	Event *EventMatch `json:"event,omitempty"`
	// After makes the rule hold only once its condition has held this
	// long (a duration, from the condition's lastTransitionTime).
	After string `json:"after,omitempty"`
}

// Health holds the readiness rules, evaluated in order after the generic
// ones; the first match wins. Conditions are read from status.conditions.
type Health struct {
	Rules []Rule `json:"rules"`
}

// PodFind is one way to find a workload's pod. Exactly one field is set.
type PodFind struct {
	// Self: the workload is itself the pod.
	Self         bool   `json:"self,omitempty"`
	Annotation   string `json:"annotation,omitempty"`
	Name         string `json:"name,omitempty"`
	SelectorFrom string `json:"selectorFrom,omitempty"`
	Selector     string `json:"selector,omitempty"`
	// Via finds the pod through another object the workload controls.
	Via *Via `json:"via,omitempty"`
}

// Via is one hop of a pod discovery: the workload names another object
// (at NameFrom), which must be controlled by the workload's UID and carry
// Selector's labels; that object's own file's pods rules then find the pod
// (controlled by that object's UID).
type Via struct {
	// Resource is the file (name) that describes the object: its api and
	// its pods rules.
	Resource string `json:"resource"`
	// NameFrom is a gjson path in the workload to the object's name.
	NameFrom string `json:"nameFrom"`
	// Selector is a label selector the object must match; ${path}
	// placeholders are paths into the workload.
	Selector string `json:"selector,omitempty"`
}

// Pods says which container to use and how to find the pod.
type Pods struct {
	Container string    `json:"container"`
	Find      []PodFind `json:"find"`
	// LabelsFrom is a gjson path to a map of labels in the workload that a
	// pod must carry to count as the workload's (e.g. labels a controller
	// adds to a pod it hands over).
	LabelsFrom string `json:"labelsFrom,omitempty"`
	// FailFast makes a wait for the workload (Engine.Wait) read its pod
	// too, with the pod file's rules: a pod they say is Failed ends the
	// wait when it passes FailFast's tests.
	FailFast *PodFailFast `json:"failFast,omitempty"`
}

// PodFailFast says which Failed pods end a wait for their workload: those
// that pass every Match test (none: all of them).
type PodFailFast struct {
	Match []Match `json:"match,omitempty"`
}

// Holds reports whether a pod (as JSON) passes the tests.
func (f *PodFailFast) Holds(pod []byte) bool {
	ok, err := matchAll(f.Match, pod)
	return ok && err == nil
}

// Backend modes.
const (
	// ModeExec: commands run in the workload's long-lived pod.
	ModeExec = "exec"
	// ModeLogs: the workload runs to completion; its pod's log is the output.
	ModeLogs = "logs"
)

// Backend says how the provider uses a workload.
type Backend struct {
	// Mode is "exec" (run commands in a long-lived pod) or "logs" (await
	// completion and return the pod's log).
	Mode string `json:"mode"`
	// Deadline is the value the template takes: "seconds" or "time".
	Deadline string `json:"deadline"`
	// DeadlinePath is where a "time" deadline lives in the workload (a
	// plain path, see path.go), so it can be moved on a live workload.
	DeadlinePath string `json:"deadlinePath,omitempty"`
	// PodSpecPath is where the pod spec lives in the workload (plain path,
	// e.g. spec.template.spec), for the admission policy that confines the
	// pods the provider may create. A workload that carries no pod spec
	// (its pods are found through another object, via) has none.
	PodSpecPath string `json:"podSpecPath,omitempty"`
	// RunEnv says where the run's environment (its run Secret) reaches the
	// commands: "pod" (default: the pod's environment) or "command" (the
	// pod existed before the run: each command gets it on stdin).
	RunEnv *RunEnv `json:"runEnv,omitempty"`
	// RunPodLabel is the label whose value is the run id on the run's pod
	// (run.podSelector; the run's scoped egress policy selects on it).
	// Default paperclip.io/run-id.
	RunPodLabel string `json:"runPodLabel,omitempty"`
	// Refusal is what acquire says when the file's when conditions do
	// not hold for a run (this backend cannot serve it).
	Refusal string `json:"refusal,omitempty"`
	// Standby says a workload can be made before its run: nothing of a
	// run is in it but its labels and its deadline (the pod's label is
	// the lease's name, the run's environment travels with each command:
	// runEnv). The worker keeps standbyLeases of them per environment,
	// and a run takes one (engine.Take) instead of waiting for a new one.
	Standby bool `json:"standby,omitempty"`
	// IdlePods are JSON pointers into the config to counts of pods this
	// backend keeps running without a run (a warm pool's size, standby
	// leases): they count against the tenant's pod quota, so validation
	// refuses a config whose sum is not below resourceQuota's pods.
	IdlePods []string `json:"idlePods,omitempty"`
}

// RunEnv names the run object whose map at Path is the run's environment,
// for a backend whose pod cannot have it (a pod made before the run).
type RunEnv struct {
	// Resource is the run file (name) of the object.
	Resource string `json:"resource"`
	// Path is a plain path to a map of strings in that object.
	Path string `json:"path"`
	// Base64: the map's values are base64 (a Secret's data).
	Base64 bool `json:"base64,omitempty"`
}

// DefaultRunPodLabel is the label on a run's pod whose value is the run id
// when the backend names no other (backend.runPodLabel).
const DefaultRunPodLabel = "paperclip.io/run-id"

// PodLabel is the backend's run pod label (DefaultRunPodLabel unless the
// file names another).
func (b *Backend) PodLabel() string {
	if b == nil || b.RunPodLabel == "" {
		return DefaultRunPodLabel
	}
	return b.RunPodLabel
}

// Subresource names a pod subresource such as log or exec.
type Subresource struct {
	Subresource    string `json:"subresource"`
	ContainerParam string `json:"containerParam,omitempty"`
}

// Owner says that a run object is owned by the workload.
type Owner struct {
	Controller bool `json:"controller"`
}

// Claim lists label keys that identify whose object it is. The provider
// creates the object when it is absent and touches an existing one only
// when it carries the rendered values of all these labels.
type Claim struct {
	Labels []string `json:"labels"`
	// TenantNamespace marks the object that is the tenant namespace itself
	// (see engine.Engine.ClaimApply).
	TenantNamespace bool `json:"tenantNamespace,omitempty"`
}

// Release says how the object is deleted.
type Release struct {
	PropagationPolicy string `json:"propagationPolicy,omitempty"`
}

// FormatVersion and FormatKind head every data file: the version of the
// file format this engine reads (as kapp's Config, kwok's Stage).
const (
	FormatVersion = "paperclip-k8s.io/v1alpha1"
	FormatKind    = "Resource"
)

// Resource is one resource data file.
type Resource struct {
	APIVersion  string         `json:"apiVersion"`
	Kind        string         `json:"kind"`
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Aliases     []string       `json:"aliases,omitempty"`
	Use         Use            `json:"scope"`
	API         *API           `json:"api,omitempty"`
	When        []Match        `json:"when,omitempty"`
	Owner       *Owner         `json:"owner,omitempty"`
	Template    map[string]any `json:"template,omitempty"`
	Backend     *Backend       `json:"backend,omitempty"`
	Health      *Health        `json:"health,omitempty"`
	Pods        *Pods          `json:"pods,omitempty"`
	Logs        *Subresource   `json:"logs,omitempty"`
	Exec        *Subresource   `json:"exec,omitempty"`
	Release     *Release       `json:"release,omitempty"`
	// Events says where events keep what rules test (the event file).
	Events *EventFields `json:"events,omitempty"`
	// PodSpecPath is where a tenant or run object carries a pod spec
	// others' pods are made from (a template a controller copies), for the
	// admission policy; a backend declares it under backend.
	PodSpecPath string `json:"podSpecPath,omitempty"`
	// Claim makes a tenant object one the provider owns by its labels
	// (see engine.Engine.Claim).
	Claim *Claim `json:"claim,omitempty"`
	// GrantsAccess marks a tenant object that grants the provider its
	// permissions in the tenant namespace (its RoleBinding): Apply applies
	// it right after the cluster-scoped objects and retries Forbidden on
	// the objects after it while the authorizer catches up.
	GrantsAccess bool `json:"grantsAccess,omitempty"`

	// File is where the resource was read from.
	File string `json:"-"`

	catalog *Catalog
}

// PodSpec is where the object carries a pod spec (backend.podSpecPath, or
// podSpecPath for another file), "" when it carries none.
func (s *Resource) PodSpec() string {
	if s.Backend != nil && s.Backend.PodSpecPath != "" {
		return s.Backend.PodSpecPath
	}
	return s.PodSpecPath
}

// Catalog is a set of resources loaded together; fragments resolve within it.
type Catalog struct {
	specs map[string]*Resource
	alias map[string]string
	order []string
}

// FileError names the data file and the place in it that is wrong.
type FileError struct {
	File    string
	Pointer string // JSON pointer inside the file, "" for the whole file
	Problem string
}

func (e *FileError) Error() string {
	if e.Pointer == "" {
		return fmt.Sprintf("%s: %s", e.File, e.Problem)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Pointer, e.Problem)
}

var resourceSchema = func() *jsonschema.Schema {
	raw, err := schemas.FS.ReadFile("resource.schema.json")
	if err != nil {
		panic(err)
	}
	c := jsonschema.NewCompiler()
	c.Draft = jsonschema.Draft2020
	if err := c.AddResource("resource.schema.json", bytes.NewReader(raw)); err != nil {
		panic(err)
	}
	return c.MustCompile("resource.schema.json")
}()

// Load reads every *.yaml file in dir of fsys, validates each against
// schemas/resource.schema.json, checks the references between them and
// checks every path into the values (${path}, $if, $each, when) against
// schemas/values.schema.json. All problems are returned together, each
// with its file and JSON pointer.
func Load(fsys fs.FS, dir string, more ...fs.FS) (*Catalog, error) {
	c := &Catalog{specs: map[string]*Resource{}, alias: map[string]string{}}
	var errs []error
	sources := append([]fs.FS{fsys}, more...)
	for i, src := range sources {
		d := dir
		if i > 0 {
			d = "."
		}
		names, err := fs.Glob(src, path.Join(d, "*.yaml"))
		if err != nil {
			return nil, err
		}
		sort.Strings(names)
		for _, n := range names {
			raw, err := fs.ReadFile(src, n)
			if err != nil {
				return nil, err
			}
			s, err := Parse(n, raw)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := c.add(s); err != nil {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, c.check()...)
	if len(errs) == 0 {
		errs = c.checkValues()
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// Parse decodes and validates one data file.
func Parse(file string, raw []byte) (*Resource, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, &FileError{File: file, Problem: "not valid YAML: " + err.Error()}
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil, &FileError{File: file, Problem: err.Error()}
	}
	if err := checkFormat(file, doc); err != nil {
		return nil, err
	}
	if err := resourceSchema.Validate(doc); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			var all []error
			for _, leaf := range leaves(ve) {
				all = append(all, &FileError{File: file, Pointer: pointerOf(leaf.InstanceLocation), Problem: leaf.Message})
			}
			return nil, errors.Join(all...)
		}
		return nil, &FileError{File: file, Problem: err.Error()}
	}
	var s Resource
	dec = json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&s); err != nil {
		return nil, &FileError{File: file, Problem: err.Error()}
	}
	if m, ok := fixNumbers(doc).(map[string]any)["template"].(map[string]any); ok {
		s.Template = m
	}
	s.File = file
	return &s, nil
}

// checkFormat refuses a file of another format version or kind before the
// schema is applied, so the error says what to change rather than listing
// every field the schema does not know.
func checkFormat(file string, doc any) error {
	m, ok := doc.(map[string]any)
	if !ok {
		return &FileError{File: file, Problem: "is not a YAML map; a data file starts with apiVersion: " + FormatVersion + " and kind: " + FormatKind}
	}
	v, _ := m["apiVersion"].(string)
	switch {
	case m["apiVersion"] == nil:
		return &FileError{File: file, Pointer: "/apiVersion", Problem: "is missing; start the file with \"apiVersion: " + FormatVersion + "\" and \"kind: " + FormatKind + "\""}
	case v != FormatVersion:
		return &FileError{File: file, Pointer: "/apiVersion", Problem: fmt.Sprintf("is %v, a version this provider does not read; it reads %s: rewrite the file for that version (schemas/resource.schema.json) or use a provider release that reads %v", m["apiVersion"], FormatVersion, m["apiVersion"])}
	}
	if k, _ := m["kind"].(string); k != FormatKind {
		if m["kind"] == nil {
			return &FileError{File: file, Pointer: "/kind", Problem: "is missing; add \"kind: " + FormatKind + "\" after the apiVersion"}
		}
		return &FileError{File: file, Pointer: "/kind", Problem: fmt.Sprintf("is %v; a data file of %s has kind %s (the Kubernetes kind it describes goes in api.kind)", m["kind"], FormatVersion, FormatKind)}
	}
	return nil
}

func leaves(ve *jsonschema.ValidationError) []*jsonschema.ValidationError {
	if len(ve.Causes) == 0 {
		return []*jsonschema.ValidationError{ve}
	}
	var out []*jsonschema.ValidationError
	for _, c := range ve.Causes {
		out = append(out, leaves(c)...)
	}
	return out
}

// pointerOf is the FileError pointer of a validator location ("/" for
// the whole file).
func pointerOf(loc string) string {
	if loc == "" {
		return "/"
	}
	return jsonpointer.FromSchemaLocation(loc)
}

func (c *Catalog) add(s *Resource) error {
	if old, ok := c.specs[s.Name]; ok {
		return &FileError{File: s.File, Pointer: "/name", Problem: fmt.Sprintf("name %q is already used by %s", s.Name, old.File)}
	}
	for _, a := range s.Aliases {
		if _, ok := c.alias[a]; ok {
			return &FileError{File: s.File, Pointer: "/aliases", Problem: fmt.Sprintf("alias %q is already used", a)}
		}
		c.alias[a] = s.Name
	}
	s.catalog = c
	c.specs[s.Name] = s
	c.order = append(c.order, s.Name)
	return nil
}

// check verifies what the schema cannot: $use names a fragment (in a
// template) or a file with health rules (in health.rules), at most one pod
// file exists, and deadlinePath is a plain path.
func (c *Catalog) check() []error {
	var errs []error
	pods := 0
	for _, n := range c.order {
		s := c.specs[n]
		if s.Use == UsePod {
			pods++
			if pods > 1 {
				errs = append(errs, &FileError{File: s.File, Pointer: "/scope", Problem: "only one file may describe pods"})
			}
		}
		if s.Backend != nil && s.Backend.DeadlinePath != "" {
			if _, err := SplitPath(s.Backend.DeadlinePath); err != nil {
				errs = append(errs, &FileError{File: s.File, Pointer: "/backend/deadlinePath", Problem: err.Error()})
			}
		}
		errs = append(errs, c.checkPodRefs(s)...)
		errs = append(errs, c.checkHealth(s)...)
		if s.Health != nil {
			rules, err := c.expandRules(s, nil)
			if err != nil {
				errs = append(errs, err)
			} else {
				s.Health.Rules = rules
			}
		}
		walkUses(s.Template, "/template", func(ptr, name string) {
			f, ok := c.specs[name]
			if !ok || f.Use != UseFragment {
				errs = append(errs, &FileError{File: s.File, Pointer: ptr, Problem: fmt.Sprintf("$use names %q, which is not a fragment in the catalog", name)})
			}
		})
	}
	return errs
}

// checkPodRefs checks what the schema cannot about a file's pod spec and
// pod discovery: podSpecPath is a plain path; a backend without one finds
// its pods only through other objects (via), whose files exist, have an
// api and pods rules, and make no cycle; runEnv names a run file.
func (c *Catalog) checkPodRefs(s *Resource) []error {
	var errs []error
	if s.PodSpecPath != "" {
		if _, err := SplitPath(s.PodSpecPath); err != nil {
			errs = append(errs, &FileError{File: s.File, Pointer: "/podSpecPath", Problem: err.Error()})
		}
	}
	if b := s.Backend; b != nil {
		if b.PodSpecPath != "" {
			if _, err := SplitPath(b.PodSpecPath); err != nil {
				errs = append(errs, &FileError{File: s.File, Pointer: "/backend/podSpecPath", Problem: err.Error()})
			}
		}
		if b.RunEnv != nil {
			if r, ok := c.specs[b.RunEnv.Resource]; !ok || r.Use != UseRun {
				errs = append(errs, &FileError{File: s.File, Pointer: "/backend/runEnv/resource", Problem: fmt.Sprintf("names %q, which is not a run file (scope: run) in the catalog", b.RunEnv.Resource)})
			}
			if _, err := SplitPath(b.RunEnv.Path); err != nil {
				errs = append(errs, &FileError{File: s.File, Pointer: "/backend/runEnv/path", Problem: err.Error()})
			}
		}
		if b.Standby && (b.RunEnv == nil || b.Deadline != "time" || b.DeadlinePath == "") {
			errs = append(errs, &FileError{File: s.File, Pointer: "/backend/standby",
				Problem: "a standby workload is made before its run: the run's environment must travel with the commands (backend.runEnv) and a run moves its deadline (backend.deadline: time with deadlinePath)"})
		}
		if b.PodSpecPath == "" && s.Pods != nil {
			for i, f := range s.Pods.Find {
				if f.Via == nil {
					errs = append(errs, &FileError{File: s.File, Pointer: fmt.Sprintf("/pods/find/%d", i),
						Problem: "finds pods of the workload itself, but backend.podSpecPath is not set: say where the workload's pod spec is (the admission policy checks it), or find the pod through another object (via)"})
				}
			}
		}
	}
	if s.Pods == nil {
		return errs
	}
	for i, f := range s.Pods.Find {
		if f.Via == nil {
			continue
		}
		ptr := fmt.Sprintf("/pods/find/%d/via/resource", i)
		if err := c.checkVia(s, f.Via.Resource, []string{s.Name}); err != "" {
			errs = append(errs, &FileError{File: s.File, Pointer: ptr, Problem: err})
		}
	}
	return errs
}

// checkVia says what is wrong with a via hop to the file named name, seen
// being the files on the way ("" when nothing is).
func (c *Catalog) checkVia(s *Resource, name string, seen []string) string {
	if slices.Contains(seen, name) {
		return fmt.Sprintf("names %q, which makes a cycle: %s", name, strings.Join(append(seen, name), " -> "))
	}
	t, ok := c.specs[name]
	if !ok || t.API == nil || t.Pods == nil {
		return fmt.Sprintf("names %q, which is not a file with an api and pods rules in the catalog", name)
	}
	for _, f := range t.Pods.Find {
		if f.Via != nil {
			if err := c.checkVia(s, f.Via.Resource, append(seen, name)); err != "" {
				return err
			}
		}
	}
	return ""
}

// ViaResources lists the files a backend's pods are found through (its
// via hops, transitively), whose APIs it needs too.
func (c *Catalog) ViaResources(s *Resource) []*Resource {
	var out []*Resource
	var walk func(r *Resource, depth int)
	walk = func(r *Resource, depth int) {
		if r.Pods == nil || depth > len(c.order) {
			return
		}
		for _, f := range r.Pods.Find {
			if f.Via == nil {
				continue
			}
			if t, ok := c.specs[f.Via.Resource]; ok && !slices.Contains(out, t) {
				out = append(out, t)
				walk(t, depth+1)
			}
		}
	}
	walk(s, 0)
	return out
}

// expandRules returns a file's readiness rules with each {$use: file}
// replaced by that file's rules.
func (c *Catalog) expandRules(s *Resource, seen []string) ([]Rule, error) {
	for _, n := range seen {
		if n == s.Name {
			return nil, &FileError{File: s.File, Pointer: "/health/rules", Problem: fmt.Sprintf("$use makes a cycle: %s", strings.Join(append(seen, s.Name), " -> "))}
		}
	}
	var out []Rule
	for i, r := range s.Health.Rules {
		if r.Use == "" {
			out = append(out, r)
			continue
		}
		u, ok := c.specs[r.Use]
		if !ok || u.Health == nil {
			return nil, &FileError{File: s.File, Pointer: fmt.Sprintf("/health/rules/%d/$use", i), Problem: fmt.Sprintf("names %q, which is not a file with health rules in the catalog", r.Use)}
		}
		more, err := c.expandRules(u, append(seen, s.Name))
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

func walkUses(node any, ptr string, fn func(ptr, name string)) {
	switch v := node.(type) {
	case map[string]any:
		if u, ok := v["$use"].(string); ok {
			fn(ptr+"/$use", u)
		}
		for k, x := range v {
			walkUses(x, ptr+"/"+jsonpointer.Escape(k), fn)
		}
	case []any:
		for i, x := range v {
			walkUses(x, fmt.Sprintf("%s/%d", ptr, i), fn)
		}
	}
}

// Get returns the resource with this name or alias.
func (c *Catalog) Get(name string) (*Resource, bool) {
	if a, ok := c.alias[name]; ok {
		name = a
	}
	s, ok := c.specs[name]
	return s, ok
}

// Used returns the resources of one use (the file's scope: key) in file-name order.
func (c *Catalog) Used(use Use) []*Resource {
	var out []*Resource
	for _, n := range c.order {
		if c.specs[n].Use == use {
			out = append(out, c.specs[n])
		}
	}
	return out
}

// All returns every resource in load order.
func (c *Catalog) All() []*Resource {
	out := make([]*Resource, 0, len(c.order))
	for _, n := range c.order {
		out = append(out, c.specs[n])
	}
	return out
}

// BackendNames lists the names (and aliases) a config may pick as backend.
func (c *Catalog) BackendNames() []string {
	var out []string
	for _, s := range c.Used(UseBackend) {
		out = append(out, s.Name)
		out = append(out, s.Aliases...)
	}
	return out
}

// Pod returns the resource that describes pods.
func (c *Catalog) Pod() (*Resource, bool) {
	p := c.Used(UsePod)
	if len(p) == 0 {
		return nil, false
	}
	return p[0], true
}
