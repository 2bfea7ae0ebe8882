// Package schemas embeds the project's JSON Schemas.
package schemas

import "embed"

// FS holds every schema file (*.json).
//
//go:embed *.json
var FS embed.FS

// ConfigSchema is config.schema.json: the JSON Schema of the provider
// configuration. The plugin manifest's environmentDrivers[].configSchema is
// this document verbatim, and plugin/policy validates configs against it.
//
//go:embed config.schema.json
var ConfigSchema []byte
