// Package resources holds one data file per Kubernetes object the provider
// creates. The engine reads them; nothing about a kind lives in Go.
package resources

import "embed"

// FS holds every resource data file (*.yaml).
//
//go:embed *.yaml
var FS embed.FS
