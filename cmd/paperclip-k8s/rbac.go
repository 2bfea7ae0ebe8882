package main

import (
	"io"

	"sigs.k8s.io/yaml"

	"github.com/paperclip-k8s/paperclip-k8s/plugin"
)

func printRBAC(w io.Writer) error {
	p, err := plugin.New(nil)
	if err != nil {
		return err
	}
	b, err := yaml.Marshal(p.ClusterRole("paperclip-k8s"))
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
